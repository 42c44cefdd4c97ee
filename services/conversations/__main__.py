import sys

from services.conversations.app import DEFAULT_PORT, create_app
from shared.serve import serve

DATA_HELP = """commands:
  data ...    data protection: purge [--dry-run], export USERNAME, audit, verify
              (python -m services.conversations data --help)"""

if __name__ == "__main__":
    if sys.argv[1:2] == ["data"]:
        from services.conversations.cli import main

        raise SystemExit(main(sys.argv[2:]))
    serve(create_app, service="conversations", default_port=DEFAULT_PORT, epilog=DATA_HELP)
