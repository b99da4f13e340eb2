"""The main job: train the toy class-conditional model on embedded data, then sample a grid."""

import sys

import sgm  # noqa: F401  (import hook before Lightning)


def main() -> int:
    print(
        "toy demo: will train configs/example_training/toy/digits_cond.yaml on the embedded "
        "dataset and write a class-conditional sample grid; the training engine is not built yet."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
