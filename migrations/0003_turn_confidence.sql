-- The recognizer's confidence (0-1) in each turn's transcript; NULL for turns not heard
-- through the recognizer (reference text) and for turns stored before this migration.
ALTER TABLE turns ADD COLUMN confidence REAL;
