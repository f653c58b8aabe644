"""`python -m jaxseq.launch ...` (see jaxseq.launch.cli)."""

from jaxseq.launch.cli import main

if __name__ == "__main__":
    main()
