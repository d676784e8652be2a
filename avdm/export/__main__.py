"""``python -m avdm.export CKPT OUT_DIR [--no-ema]`` (:func:`avdm.export.main`)."""

from avdm.export import main

if __name__ == "__main__":
    main()
