"""``python -m etcdwarden``."""

from etcdwarden.cli.entry import main

main()
