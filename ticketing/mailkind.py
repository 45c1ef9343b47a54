"""What each outgoing mail is: kept on its outbox row, and on its count against the
limits on automatic mail."""

from __future__ import annotations

from enum import StrEnum


class MailKind(StrEnum):
    CONFIRMATION = "confirmation"  # a new request confirmed to its requester and copied
    NEW_TICKET = "new_ticket"  # the agents' notice of a new request
    REPLY = "reply"  # an answer on a ticket passed on to its readers
    NOTE = "note"  # an internal note passed on to the agents
    STATUS_SOLVED = "status_solved"  # a status change told without an answer
    STATUS_CLOSED = "status_closed"
    STATUS_REOPENED = "status_reopened"
    RAISED = "raised"  # a customer's raised severity acknowledged
    COMMAND_ERROR = "command_error"  # an agent's commands refused, and why
    NOT_PAGED = "not_paged"  # the agents told that on-call could not be paged
    NO_ACCOUNT = "no_account"  # a held request's sender told how to get an account
    POSTMASTER = "postmaster"  # mail to postmaster@ passed on to the operator
    SIGN_IN = "sign_in"  # a Help Desk sign-in link
    RESET = "reset"  # a Help Desk password reset link
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 (a kind of mail, not a password)
    STATUS_SUBSCRIBE = "status_subscribe"  # a status page subscription to confirm or manage
    # An incident update to the status page's subscribers: counted against each
    # reader's hourly limit, not against the ceiling on all automatic mail.
    STATUS_UPDATE = "status_update"
