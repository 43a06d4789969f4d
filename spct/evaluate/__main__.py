"""`python -m spct.evaluate`: see spct.evaluate.command."""

from spct.evaluate.command import main

if __name__ == "__main__":
    main()
