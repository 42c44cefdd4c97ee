"""Chat service: POST /webhook/wibot/chat (workflow chat_main)."""
