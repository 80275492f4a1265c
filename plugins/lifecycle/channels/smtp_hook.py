"""The smtp provider's SmtpHook over a connection already in hand, handing out its smtplib client.

The email channel drives MAIL/RCPT/DATA itself (it needs each reply), but opening the session
is the hook's: the connect retries (`retry_limit`), `timeout`, implicit TLS (`disable_ssl`) or
STARTTLS (`disable_tls`) with the `ssl_context` extra (certificates verified unless it is
`none`), and AUTH (login and password, or `auth_type: oauth2`).
"""

from __future__ import annotations

import smtplib

from airflow.providers.common.compat.sdk import AirflowException
from airflow.providers.smtp.hooks.smtp import SmtpHook

__all__ = ["AirflowException", "ConnectionSmtpHook"]


class ConnectionSmtpHook(SmtpHook):
    """SmtpHook for a Connection read once (from Airflow, or built by the caller), so each SMTP
    session of a channel opens without looking the connection up again."""

    def __init__(self, connection) -> None:
        super().__init__(smtp_conn_id=connection.conn_id)
        self.smtp_connection = connection

    def get_connection(self, conn_id: str):  # the hook's only lookup, in get_conn()
        return self.smtp_connection

    @property
    def host(self) -> str:
        return super().host or "localhost"  # no host is this machine (smtplib would not connect)

    @property
    def smtp_starttls(self) -> bool:
        # Only a plain connection is upgraded: the hook would also send STARTTLS inside implicit
        # TLS (port 465), which servers refuse, unless `disable_tls` is set as well.
        return super().smtp_starttls and not self.use_ssl

    def open(self) -> smtplib.SMTP:
        """Connect, STARTTLS and AUTH as the connection says, then greet (EHLO) if nothing has yet,
        so that every failure to open the session surfaces here; the client, ready for MAIL FROM."""
        try:
            self.get_conn()  # returns the hook; the client stays in _smtp_client (SmtpHook has no accessor)
            self._smtp_client.ehlo_or_helo_if_needed()
        except BaseException:
            if self._smtp_client is not None:
                self._smtp_client.close()
            raise
        return self._smtp_client
