"""The Help Desk on the web: a Starlette app served by `mailgate serve` beside SMTP."""
