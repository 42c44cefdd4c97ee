from services.conversations.app import DEFAULT_PORT, create_app
from shared.serve import serve

if __name__ == "__main__":
    serve(create_app, service="conversations", default_port=DEFAULT_PORT)
