"""Every rule of DESIGN §3, by ID, level and one-line statement.

Each ID must be named by at least one test (``@pytest.mark.rule("DEDUP-3")``);
``tests/test_rules_covered.py`` fails otherwise. The spec pages (specs/) state the same rules
in full; this catalogue is what the tests are checked against until the pages generate it.
"""

RULES: dict[str, tuple[str, str]] = {
    # Submission
    "BG-1": ("MUST", "run_background returns the new task id before the work finishes"),
    "BG-2": (
        "MUST",
        "accepts a coroutine object or a registered task name; kwargs go to the registered function",
    ),
    "BG-3": ("MUST", "an unknown registered name raises ValueError naming it"),
    "BG-4": (
        "MUST",
        "anything else (e.g. fn instead of fn()) raises ValueError showing the incorrect and the correct call",
    ),
    "BG-5": (
        "MUST",
        "a task is pending, then running, then completed with progress 1.0 and its JSON-safe result stored",
    ),
    "BG-6": (
        "MUST",
        "a task that raises ends failed with error = str(exc); the runtime is unharmed, no unretrieved-exception noise",
    ),
    "BG-7": ("MUST", "a cancelled task ends interrupted"),
    "BG-8": ("SHOULD", "an interrupted task pushes backgroundTaskError"),
    "BG-9": (
        "MUST",
        "a failed submission leaves nothing behind: no row, no message, the coroutine closed",
    ),
    "BG-10": ("SHOULD", "a sync registered function runs in a worker thread"),
    "BG-11": (
        "MUST",
        "a terminal task never changes status again; every change follows the lifecycle table",
    ),
    # Ownership
    "OWN-1": (
        "MUST",
        "no session user id raises ValueError before anything else, before the manager check",
    ),
    "OWN-2": ("MUST", "the row carries the session's user and organization"),
    "OWN-3": (
        "MUST",
        "lifecycle messages reach only the owner's connections (same user and organization)",
    ),
    "OWN-4": (
        "MUST",
        "client commands from anyone but the owner are ignored without effect or leak",
    ),
    "OWN-5": (
        "MUST",
        "completed/failed/confirmation messages for an offline owner are queued and delivered in order on reconnect; started/progress are not",
    ),
    # Dedup
    "DEDUP-1": (
        "MUST",
        "an active task with the same key in the same organization is returned: no new row, no started message, the coroutine closed, a registered function not called",
    ),
    "DEDUP-2": ("MUST", "terminal tasks never block a key"),
    "DEDUP-3": ("MUST", "the scope is (organization_id, task_key); None matches None only"),
    "DEDUP-4": ("MUST", "an empty task_key means no key"),
    "DEDUP-5": ("MUST", "a non-str task_key raises before anything is created"),
    "DEDUP-6": (
        "MUST",
        "N concurrent submissions of one key (coroutines, threads, processes) create exactly one task and all get its id",
    ),
    # Commands
    "CMD-1": (
        "MUST",
        "the command must be a non-empty list: str, tuple, None, [] raise TypeError and start nothing",
    ),
    "CMD-2": ("MUST", "an empty or blank token raises ValueError"),
    "CMD-3": ("SHOULD", "tokens are str or os.PathLike; other types raise TypeError"),
    "CMD-4": ("MUST", "never through a shell: metacharacters stay literal arguments"),
    "CMD-5": ("MUST", "results, check=True and timeout behave as subprocess.run documents"),
    "CMD-6": ("MUST", "on timeout or cancellation the whole process group is killed and reaped"),
    "CMD-7": (
        "MUST",
        "env must be a dict (else TypeError), is merged over the parent environment, and sandbox variables are applied last",
    ),
    "CMD-8": ("MUST", "run_subprocess never blocks the event loop"),
    "CMD-9": (
        "SHOULD",
        "a cwd outside the module's allowed paths raises PermissionError before anything starts",
    ),
    "CMD-10": (
        "MUST",
        "the sandbox variables of the module, user, organization, session and request are set, each only when known",
    ),
    # Blocking
    "BLOCK-1": ("MUST", "run_blocking runs func in a worker thread and returns its value"),
    "BLOCK-2": ("MUST", "run_blocking re-raises func's exception unchanged"),
    "BLOCK-3": ("MUST", "the event loop keeps serving other coroutines meanwhile"),
    "BLOCK-4": ("MUST", "a non-callable raises TypeError"),
    "BLOCK-5": (
        "MUST",
        "the caller's context variables are visible inside; changes inside leak neither out nor into later calls",
    ),
    # Context
    "CTX-1": (
        "MUST",
        "the request context active at run_background is the one the task sees, even after the request ended",
    ),
    "CTX-2": ("MUST", "concurrent requests' tasks each see their own context"),
    "CTX-3": ("MUST", "the submitting module's identity and sandbox rules apply inside the task"),
    "CTX-4": (
        "MUST",
        "with no request context the task gets a synthetic one (request_id task:<id>) with the submitter's user and organization",
    ),
    # Progress
    "PROG-1": (
        "MUST",
        "update_progress clamps into [0, 1], stores it, replaces checkpoint/label, touches updated_at, pushes backgroundTaskProgress",
    ),
    "PROG-2": (
        "SHOULD",
        "non-finite progress raises ValueError and never corrupts the stored value",
    ),
    "PROG-3": (
        "MUST",
        "a checkpoint that is not a JSON-serialisable dict is rejected and nothing is stored",
    ),
    "PROG-4": ("MUST", "an unknown task id is a silent no-op"),
    "PROG-5": (
        "MUST",
        "emit_progress pushes the message without storing anything; None means the current value",
    ),
    # Confirmation
    "CONF-1": (
        "MUST",
        "request_confirmation sets waiting_confirmation, stores it and pushes backgroundTaskConfirmation with the components",
    ),
    "CONF-2": (
        "MUST",
        "it waits for the owner's backgroundTaskResponse, sets running and returns the response",
    ),
    "CONF-3": ("MUST", "an unknown task id raises ValueError"),
    "CONF-4": ("MUST", "only the owner can answer"),
    "CONF-5": ("MUST", "a cancel while waiting ends the task interrupted"),
    # Queries
    "QUERY-1": (
        "MUST",
        "get_tasks_by_key returns serialized rows newest first, not filtered by user or status",
    ),
    "QUERY-2": (
        "MUST",
        "get_tasks_by_key_prefix matches the literal prefix (_ and % are literal), newest first",
    ),
    "QUERY-3": (
        "MUST",
        "list_user_tasks returns the user's rows in the organization, newest first",
    ),
    "QUERY-4": ("MUST", "organization matches exactly and is not defaulted from the session"),
    "QUERY-5": (
        "MUST",
        "queries return [] and never raise when the manager is missing or the store fails",
    ),
    "QUERY-6": ("MUST", "serialized rows carry the camelCase fields and id equal to taskId"),
    # Manager and recovery
    "MGR-1": (
        "MUST",
        "with no task manager, run_background and request_confirmation raise RuntimeError('TaskManager not initialized')",
    ),
    "MGR-2": ("MUST", "with no task manager, progress calls are no-ops and queries return []"),
    "REC-1": (
        "MUST",
        "at start, tasks left active by a runtime that is gone become interrupted (error says the runtime restarted); the key is free, history stays",
    ),
    "REC-2": ("MUST", "tasks of a runtime that is still alive on the same store are never touched"),
    "REC-3": (
        "MUST",
        "the offline message queue lives in the store: a restart does not lose a queued completion",
    ),
}
