#!/usr/bin/env bash
# The spec's 8 curl tests ("Tests Validation"), run against the gateway, with their expectations checked.
#
#   BASE_URL=http://localhost:5678 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/wibot tests/e2e/spec_curl_tests.sh
#
# Needs curl, jq and psql. DATABASE_URL is used for the spec's own data set-up: the test conversation
# (tests 6-7) and the quota it asks to exceed by hand (test 8). Test 5 uses a valid UUID (the spec's
# 770f9622-g4bd-... is not hexadecimal: the service answers 400, as a separate check shows).
set -euo pipefail

BASE_URL=${BASE_URL:-http://localhost:5678}
: "${DATABASE_URL:?DATABASE_URL is needed for the spec data set-up}"
CONV=550e8400-e29b-41d4-a716-446655440000
failures=0

check() {  # check NAME JQ_EXPRESSION JSON
  if echo "$3" | jq -e "$2" >/dev/null 2>&1; then
    echo "ok   - $1"
  else
    echo "FAIL - $1: $3"
    failures=$((failures + 1))
  fi
}

sql() { psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -qAt -c "$1"; }

# The spec's test data (Données de Test), for the demo user.
USER_ID=$(sql "SELECT user_id FROM users WHERE username = 'khora'")
sql "DELETE FROM conversations WHERE conversation_id IN ('$CONV', '660f9511-f3ac-52e5-b827-557766551111', '770f9622-a4bd-43f6-a938-668877662222');
     DELETE FROM user_token_usage WHERE user_id = $USER_ID;
     INSERT INTO conversations (conversation_id, user_id, title, created_at, updated_at)
     VALUES ('$CONV', $USER_ID, 'Conversation de test', NOW() - INTERVAL '2 days', NOW() - INTERVAL '1 day');
     INSERT INTO messages (conversation_id, user_id, role, content, tokens, created_at) VALUES
     ('$CONV', $USER_ID, 'user', 'Bonjour WIBOT !', 10, NOW() - INTERVAL '2 days'),
     ('$CONV', $USER_ID, 'assistant', 'Bonjour ! Comment puis-je t''aider ?', 15, NOW() - INTERVAL '2 days' + INTERVAL '2 seconds'),
     ('$CONV', $USER_ID, 'user', 'Peux-tu m''expliquer comment fonctionne PostgreSQL ?', 12, NOW() - INTERVAL '2 days' + INTERVAL '1 minute'),
     ('$CONV', $USER_ID, 'assistant', 'PostgreSQL est un système de gestion de base de données relationnelle...', 85, NOW() - INTERVAL '2 days' + INTERVAL '1 minute 5 seconds'),
     ('$CONV', $USER_ID, 'user', 'Et comment faire un backup ?', 8, NOW() - INTERVAL '1 day'),
     ('$CONV', $USER_ID, 'assistant', 'Pour faire un backup PostgreSQL, tu peux utiliser pg_dump...', 95, NOW() - INTERVAL '1 day' + INTERVAL '3 seconds');" >/dev/null

json_post() { curl -s -X POST "$BASE_URL$1" -H "Content-Type: application/json" "${@:3}" -d "$2"; }

# Test 1: login success
R=$(json_post /webhook/auth/login '{"username": "khora", "password": "test123"}')
check "1 login success" '.success == true and (.token | length > 20) and .user.username == "khora" and .user.role == "admin" and (.user.id | type == "number")' "$R"
TOKEN=$(echo "$R" | jq -r .token)
AUTH=(-H "Authorization: Bearer $TOKEN")

# Test 2: login failure
R=$(json_post /webhook/auth/login '{"username": "khora", "password": "wrongpass"}')
check "2 login failure" '. == {"success": false, "error": "Identifiants invalides", "code": "INVALID_CREDENTIALS"}' "$R"

# Test 3: simple chat
R=$(json_post /webhook/wibot/chat "{\"conversation_id\": \"$CONV\", \"message\": \"Salut WIBOT ! Comment ça va ?\"}" "${AUTH[@]}")
check "3 chat" ".success == true and (.response | length > 0) and .tokens_used > 0 and .tokens_remaining == 50000 - .tokens_used and .conversation_id == \"$CONV\" and (keys | length == 5)" "$R"

# Test 4: memory
C4=660f9511-f3ac-52e5-b827-557766551111
R=$(json_post /webhook/wibot/chat "{\"conversation_id\": \"$C4\", \"message\": \"Parle-moi de PostgreSQL\"}" "${AUTH[@]}")
check "4a first message" '.success == true' "$R"
R=$(json_post /webhook/wibot/chat "{\"conversation_id\": \"$C4\", \"message\": \"Comment je fais un backup ?\"}" "${AUTH[@]}")
check "4b second message" '.success == true' "$R"
R=$(curl -s "$BASE_URL/webhook/wibot/conversations/$C4/messages" "${AUTH[@]}")
check "4c history kept" '[.messages[].role] == ["user", "assistant", "user", "assistant"] and .messages[0].content == "Parle-moi de PostgreSQL"' "$R"

# Test 5: file (valid UUID), then the spec's invalid UUID
R=$(json_post /webhook/wibot/chat '{"conversation_id": "770f9622-a4bd-43f6-a938-668877662222", "message": "Analyse ce log et dis-moi ce qui ne va pas", "files": [{"name": "error.log", "content": "[2024-12-25 14:30:15] ERROR: Connection timeout to database\n[2024-12-25 14:30:16] ERROR: Retry failed"}]}' "${AUTH[@]}")
check "5 chat with a file" '.success == true and .conversation_id == "770f9622-a4bd-43f6-a938-668877662222"' "$R"
R=$(json_post /webhook/wibot/chat '{"conversation_id": "770f9622-g4bd-63f6-c938-668877662222", "message": "x"}' "${AUTH[@]}")
check "5b spec UUID is not hex: 400 envelope" '.success == false and (.error | contains("UUID"))' "$R"

# Test 6: conversations
R=$(curl -s "$BASE_URL/webhook/wibot/conversations" "${AUTH[@]}")
check "6 conversations" ".success == true and ([.conversations[] | select(.conversation_id == \"$CONV\")][0] | .title == \"Conversation de test\" and .message_count == 8 and (.updated_at | test(\"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$\")))" "$R"

# Test 7: messages
R=$(curl -s "$BASE_URL/webhook/wibot/conversations/$CONV/messages" "${AUTH[@]}")
check "7 messages" '.success == true and (.messages | length == 8) and .messages[0].content == "Bonjour WIBOT !" and ([.messages[].role] | unique == ["assistant", "user"]) and all(.messages[]; .created_at | test("Z$"))' "$R"

# Test 8: quota exceeded (set by hand, as the spec says)
sql "UPDATE user_token_usage SET used_tokens = 51000 WHERE user_id = $USER_ID" >/dev/null
R=$(json_post /webhook/wibot/chat "{\"conversation_id\": \"$CONV\", \"message\": \"Test quota\"}" "${AUTH[@]}")
check "8 quota exceeded" '. == {"success": false, "error": "Quota tokens mensuel dépassé. Limite : 50,000 tokens/mois.", "code": "QUOTA_EXCEEDED"}' "$R"
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE_URL/webhook/wibot/chat" -H "Content-Type: application/json" "${AUTH[@]}" -d "{\"conversation_id\": \"$CONV\", \"message\": \"Test quota\"}")
check "8b status 429" '. == 429' "$STATUS"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all spec curl tests passed"
