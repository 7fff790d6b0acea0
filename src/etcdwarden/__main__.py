"""``python -m etcdwarden``."""

from etcdwarden.cli.main import main

main()
