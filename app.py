"""Serve the infd canvas: ``python app.py --help`` (the code is in :mod:`app.cli`; installed with
pip, the same is the ``infd-app`` command). A Hugging Face Space runs this file."""
import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
