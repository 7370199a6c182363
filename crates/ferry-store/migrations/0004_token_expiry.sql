-- API tokens may expire (SEC-3): the instant after which the token is refused; NULL = never.
ALTER TABLE tokens ADD COLUMN expires_ms INTEGER;
