DROP TRIGGER exports_notify ON exports;
DROP FUNCTION exports_notify();
DROP TABLE api_tokens;
DROP TABLE export_steps;
DROP TABLE exports;
