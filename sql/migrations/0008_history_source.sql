-- 0008: where a history row came from. 'poll': the history queue (every row before this
-- migration); 'push': a callback the receiver accepted (issue 16). A message that arrives both
-- ways keeps the source of whichever copy was committed first (same unique message key).
-- Must run on PostgreSQL 15 as well as newer servers.

ALTER TABLE sms_history
    ADD COLUMN source text NOT NULL DEFAULT 'poll'
        CONSTRAINT sms_history_source_check CHECK (source IN ('poll', 'push'));
