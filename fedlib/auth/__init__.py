"""Event authorisation: the authorisation rules of every room version.

Pure and synchronous: plain event dicts in, :class:`~fedlib.errors.AuthError` out
when an event is not allowed. :func:`check_auth` is the entry point.

No module here keeps state between calls, so every function is safe to call from
several threads at once (state resolution runs in a thread pool).
"""

from fedlib.auth.power_levels import (
    NAMED_LEVEL_DEFAULTS,
    creators,
    get_named_level,
    get_send_level,
    get_user_power_level,
    is_creator,
    is_valid_user_id,
)
from fedlib.auth.rules import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    auth_types_for_event,
    auth_types_with,
    check_auth,
    check_auth_events_list,
    check_auth_with,
    select_auth_events,
)

__all__ = [
    "CREATE_KEY",
    "JOIN_RULES_KEY",
    "NAMED_LEVEL_DEFAULTS",
    "POWER_LEVELS_KEY",
    "auth_types_for_event",
    "auth_types_with",
    "check_auth",
    "check_auth_events_list",
    "check_auth_with",
    "creators",
    "get_named_level",
    "get_send_level",
    "get_user_power_level",
    "is_creator",
    "is_valid_user_id",
    "select_auth_events",
]
