-- renewal-bot schema, version 2: which process owns a live call, and outbound dial
-- attempts recorded before the Calls API request.

-- The process handling the call (`instances.instance_id`): the dialer while the Calls API
-- request is in flight, then the server that runs the call's media. NULL in calls recorded
-- by a renewal-bot older than version 2.
ALTER TABLE calls ADD COLUMN owner_instance TEXT;

-- Outbound calls only (NULL for calls that came in):
--   'dialing'    the attempt is recorded and the Calls API request sent, the answer not
--                (yet) known: the call may exist at Twilio;
--   'placed'     Twilio created the call (call_sid is its CallSid);
--   'refused'    Twilio refused the request: no call was made;
--   'not_placed' reconciled later: Twilio's call list has no such call;
--   'merged'     reconciled later: the call is recorded under another call id.
ALTER TABLE calls ADD COLUMN dial_status TEXT;
CREATE INDEX calls_by_number ON calls (to_number);

-- The renewal-bot processes using this database, each refreshing `heartbeat_at` every few
-- seconds while it runs and deleting its row when it stops cleanly. A process whose
-- heartbeat is old, or whose pid is gone on the same host, is dead: its open calls were
-- cut off.
CREATE TABLE instances (
    instance_id  TEXT PRIMARY KEY NOT NULL,
    command      TEXT NOT NULL,             -- 'serve' | 'sip' | 'campaign' | 'call'
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,             -- boot id + pid namespace: where `pid` means something
    proc_start   TEXT NOT NULL,             -- the process's start tick on that host (pid reuse)
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
