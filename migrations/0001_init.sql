-- renewal-bot schema, version 1.
-- Times are RFC 3339 UTC text with milliseconds ("2026-01-02T03:04:05.678Z"), so they
-- sort as text. Call-time offsets (speech_start_ms, ...) are milliseconds since the
-- call started.

-- One row per call attempt. `outcome` is NULL while the call is live (or if the process
-- died before the call finished).
CREATE TABLE calls (
    call_id     TEXT PRIMARY KEY NOT NULL,
    transport   TEXT NOT NULL,              -- 'twilio' | 'sip' | 'eval' | ...
    to_number   TEXT,                       -- normalized, e.g. +8613800000000
    from_number TEXT,
    call_sid    TEXT,                       -- Twilio CallSid
    stream_sid  TEXT,                       -- Twilio Media Streams StreamSid
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    duration_ms INTEGER,
    outcome     TEXT,                       -- labels::Outcome, NULL while live
    do_not_call INTEGER NOT NULL DEFAULT 0  -- 1 if the call put the number on the DNC list
);
CREATE INDEX calls_by_start ON calls (started_at);
CREATE INDEX calls_by_sid ON calls (call_sid);

-- One row per understood callee utterance, in order (seq starts at 1 per call).
CREATE TABLE turns (
    call_id         TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    speech_start_ms INTEGER NOT NULL,
    speech_end_ms   INTEGER NOT NULL,
    transcript      TEXT NOT NULL,
    intent          TEXT,                   -- the reported intent (first of `intents`)
    intents         TEXT NOT NULL,          -- JSON array of every intent label found
    reply           TEXT NOT NULL,          -- JSON array of the line ids the bot answered with
    latency_ms      INTEGER,                -- end of speech to first reply audio, if known
    recorded_at     TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
);

-- The permanent do-not-call list. Deliberately no foreign key to `calls`: an entry
-- must outlive any call row and may come from an operator rather than a call.
CREATE TABLE do_not_call (
    number         TEXT PRIMARY KEY NOT NULL, -- normalized, e.g. +8613800000000
    reason         TEXT NOT NULL,             -- the callee's words or an operator's note
    source_call_id TEXT,
    added_at       TEXT NOT NULL
);

-- Twilio status callbacks and other notable events of a call.
CREATE TABLE call_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX call_events_by_call ON call_events (call_id, id);
