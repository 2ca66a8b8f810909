-- The message archive: one row per room event, keyed as the room's Stream keys it.
-- (room, epoch, offset) is the primary key, so a record archived twice (a retry, a take-over
-- of a dead instance's records) is stored once: the insert says ON CONFLICT DO NOTHING.
CREATE TABLE IF NOT EXISTS chat_messages (
    room        text        NOT NULL,
    epoch       text        NOT NULL,
    "offset"    bigint      NOT NULL,
    -- The message id the client or server gave (the record's "id").
    id          text        NOT NULL,
    -- The record's "sentAt" (RFC 3339, server clock); NULL if it did not parse.
    sent_at     timestamptz,
    archived_at timestamptz NOT NULL DEFAULT now(),
    -- The whole record as Redis held it: type, sender, content, serverId, headers and the
    -- client's own fields.
    record      jsonb       NOT NULL,
    PRIMARY KEY (room, epoch, "offset")
);

-- "A room, newest first" (history paging by time).
CREATE INDEX IF NOT EXISTS chat_messages_room_newest
    ON chat_messages (room, sent_at DESC, "offset" DESC);
