"""What the Streamlit and Gradio demo pages share: where models come from, checked
requests, sampling calls and the page layouts. The scripts under ``scripts/demo`` only
call into these modules; Streamlit and Gradio are imported by the page modules alone."""
