-- 0014: what sms_callback keeps of a callback it could not read or store as sent (issue 24). Comments
-- only: a requestId with NUL or lone surrogates is cleaned and a callbackCount outside an integer
-- kept NULL, each with a note in problem; a body the receiver failed to store is kept unread
-- (shape unknown, the failure in problem) and takes what a later successful reading produced.
-- Must run on PostgreSQL 15 as well as newer servers.

COMMENT ON TABLE sms_callback IS $c$Every callback the receiver (sync-worker receive, push mode) accepted, one row per distinct body, written in the same transaction as the history rows it produced, before the receiver answers 2xx. Refused requests are never stored. A body of a shape the receiver does not know, or one it failed to store (answered 500), is kept with shape unknown and reported: its messages are not in the history until a delivery of the same body is read (the row then takes that reading's shape, messages and keys).$c$;
COMMENT ON COLUMN sms_callback.shape IS $c$How the body was read: envelope (a history message under a ...Response key, at any depth of ...Response objects), messages (a messages list), flat (text and deviceIds at the top level) or unknown.$c$;
COMMENT ON COLUMN sms_callback.problem IS $c$For unknown: which top-level keys it had (names only), or the receiver failure that kept it unread. Then, for any shape, notes on envelope fields not kept as sent (a requestId cleaned of NUL or lone surrogates, a callbackCount out of range kept NULL). NULL when there is nothing to say.$c$;
COMMENT ON COLUMN sms_callback.request_id IS $c$The envelope's requestId, when present (NUL and lone surrogates replaced by U+FFFD, noted in problem).$c$;
COMMENT ON COLUMN sms_callback.callback_count IS $c$The envelope's callbackCount (the platform's delivery attempt), when present and within an integer (otherwise NULL, noted in problem).$c$;
COMMENT ON COLUMN sms_callback.inserted IS $c$Of those, rows new to the history when the body was first read (the rest were stored already: pushed before or polled).$c$;
