"""``python -m hsm.cli ...``: the same as the ``hsm`` command."""

from hsm.cli.main import main

if __name__ == "__main__":
    main()
