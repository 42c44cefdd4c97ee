import sys

from services.auth.app import DEFAULT_PORT, create_app
from shared.serve import serve

USERS_HELP = """commands:
  users ...   manage people without SQL: create, list, set-password, set-role, set-quota, add-tokens,
              set-accreditation, deactivate, reactivate, delete, migrate-passwords
              (python -m services.auth users --help)"""

if __name__ == "__main__":
    if sys.argv[1:2] == ["users"]:
        from services.auth.cli import main

        raise SystemExit(main(sys.argv[2:]))
    serve(create_app, service="auth", default_port=DEFAULT_PORT, epilog=USERS_HELP)
