-- 0011 each conversation's message count, kept by triggers in the same transaction as the messages, so that a
-- page of the conversation list reads its 50 rows and not the messages behind them. A table of its own: an
-- UPDATE of `conversations` would move updated_at (its n8n trigger), and the list is ordered by it.
-- depends: 0010-knowledge-base

CREATE TABLE IF NOT EXISTS conversation_message_counts (
    conversation_id UUID PRIMARY KEY REFERENCES conversations(conversation_id) ON DELETE CASCADE,
    message_count   INTEGER NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION count_conversation_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE conversation_message_counts c SET message_count = c.message_count - gone.n
        FROM (SELECT conversation_id, count(*) AS n FROM old_rows WHERE conversation_id IS NOT NULL
              GROUP BY conversation_id) AS gone
        WHERE c.conversation_id = gone.conversation_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO conversation_message_counts AS c (conversation_id, message_count)
        SELECT conversation_id, count(*) FROM new_rows WHERE conversation_id IS NOT NULL GROUP BY conversation_id
        ON CONFLICT (conversation_id) DO UPDATE SET message_count = c.message_count + EXCLUDED.message_count;
    END IF;
    RETURN NULL;
END $$;

-- The triggers first: from here until this migration commits, writers to `messages` wait, so the count below
-- misses nothing.
DROP TRIGGER IF EXISTS count_messages_inserted ON messages;
CREATE TRIGGER count_messages_inserted AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_conversation_messages();

DROP TRIGGER IF EXISTS count_messages_deleted ON messages;
CREATE TRIGGER count_messages_deleted AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_conversation_messages();

DROP TRIGGER IF EXISTS count_messages_moved ON messages;
CREATE TRIGGER count_messages_moved AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION count_conversation_messages();

-- Existing conversations with messages (without any, no row: a count of 0). Re-running this file recounts to
-- the same values.
INSERT INTO conversation_message_counts (conversation_id, message_count)
SELECT m.conversation_id, count(*) FROM messages m JOIN conversations c USING (conversation_id)
GROUP BY m.conversation_id
ON CONFLICT (conversation_id) DO UPDATE SET message_count = EXCLUDED.message_count;
