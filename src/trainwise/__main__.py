"""`python -m trainwise ...`: what the MLproject entry points call."""

from trainwise.cli import main

if __name__ == "__main__":
    main()
