"""Auth service: POST /webhook/auth/login and the operators' `users` command."""
