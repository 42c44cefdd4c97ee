import sys

from services.chat.app import DEFAULT_PORT, create_app
from shared.serve import serve

KB_HELP = """commands:
  kb ingest [PATH] [--category C] [--full]   index the knowledge base's documents (under KB_ROOT)
  kb status                                  what is indexed, by category
  kb adopt-n8n                               take an n8n WIBOT's n8n_vectors, without embedding again"""

if __name__ == "__main__":
    if sys.argv[1:2] == ["kb"]:
        from services.chat.knowledge.cli import main

        raise SystemExit(main(sys.argv[2:]))
    serve(create_app, service="chat", default_port=DEFAULT_PORT, epilog=KB_HELP)
