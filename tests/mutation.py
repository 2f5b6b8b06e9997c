"""Mutation testing one module at a time: ``python tests/mutation.py MODULE [--max-children N]``.

MODULE is a source file's path under ``src/krepis`` without ``.py`` (``tlog/_note``,
``storage/lmdb/_recovery``). mutmut reads a single ``[tool.mutmut]`` section, and a run over
every module with every test would take days on a small machine. This script runs one module
against the in-process tests of its package (``SELECTIONS``): it copies the committed tree
(``git archive HEAD``) to ``.mutation/MODULE/`` (slashes as ``.``), writes that module's
``[tool.mutmut]`` there and runs ``mutmut run`` in the copy, so the working tree is never
touched and runs of different modules can be resumed independently (``mutmut results`` /
``mutmut show NAME`` inside the copy). Commit first: only committed code and tests are copied.

``--record`` writes the run's counts into the score table of docs/testing.md (with the date and
the commit whose code was mutated); ``--status`` prints that table with each module's state —
*current*, *stale* (its source changed since the recorded run: git says so) or *never run* —
and ``--status --write`` puts the states into the table (``tests/test_mutation_table.py``
fails while the table disagrees with git). Survivors judged equivalent are listed, each with
its reason, in ``tests/mutation_equivalents.txt``.

For ``storage/postgres/*`` a PostgreSQL server is started once for the whole run (``tests/pg.py``)
and shared by every mutant's test session (``KREPIS_TEST_POSTGRES``), then stopped.

``PYTHONPATH`` points at the mutated copy (``mutants/src``), and mutmut names the active mutant
in the environment (``MUTANT_UNDER_TEST``), so a child Python process a test starts (a writer
killed by the power-loss tests, a ``krepis`` command) runs the same mutant. Tests are still
chosen by what they call in-process. The power-loss tests make 8 cuts per case here
(``KREPIS_POWERLOSS_CUTS``).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SRC = ROOT / "src" / "krepis"
DOC = ROOT / "docs" / "testing.md"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"

_LMDB_TESTS = ["test_storage_lmdb.py", "test_lmdb_damage.py", "test_commitlog*.py", "test_bad_storage.py",
               "test_journal.py", "test_guarantees.py", "test_tlog.py", "test_archive.py", "test_safety_*.py",
               "test_migrate*.py", "test_backup.py", "test_compact.py", "test_review_findings.py",
               "test_flush.py", "test_concurrency.py", "test_powerloss.py", "test_durable_copies.py",
               "test_outfiles.py", "test_gaps_storage.py", "test_gaps_commitlog.py", "test_tail_units.py",
               "test_backup_units.py", "test_backup_archive.py", "test_files_units.py",
               "test_catchup_units.py"]
#: leaves out the tests that need the PostgreSQL server: tests/conftest.py gives each test using its
#: fixtures the keyword ``postgres``, and the engine-parametrized tests carry it in their ids
_NO_PG = "not postgres"
_ENGINE_TESTS = ["test_catchup_units.py", "test_tail_units.py", "test_concurrency.py", "test_storage_lmdb.py",
                 "test_commitlog*.py", "test_gaps_commitlog.py", "test_gaps_storage.py", "test_guarantees.py",
                 "test_lmdb_damage.py", "test_journal.py"]

#: package prefix (under src/krepis; the longest that matches a module wins) → (test files,
#: globs allowed, in tests/; pytest -k expression or None). The tests are the in-process ones
#: of that package (mutmut never sees code run only by a subprocess); tests that restart servers
#: or take minutes while repeating what others check are left out to keep runs short.
SELECTIONS: dict[str, tuple[list[str], str | None]] = {
    "": (["test_model.py", "test_cli_time.py", "test_journal.py", "test_safety_api.py", "test_codec.py",
          "test_flush.py", "test_guarantees.py"], _NO_PG + " and not deno"),
    # the Prometheus exposition: its unit tests (exact text, the collector across archiving and
    # clears, the server's answers) and the summaries' in-process metrics tests
    "_metrics": (["test_metrics_units.py", "test_summary.py"],
                 "test_metrics_units or metrics or collector"),
    # the exception tree: its unit tests
    "_errors": (["test_errors_units.py"], None),
    # the data model (validation, messages, the canonical bytes, the decoders): its unit tests, the
    # model's and the codec's tests, and the refusals at the public boundary
    "_model": (["test_model_units.py", "test_model.py", "test_codec.py", "test_safety_api.py"],
               _NO_PG + " and not deno"),
    # the flush policy: its unit tests and the journal's flush tests
    "_policy": (["test_policy_units.py", "test_flush.py"], _NO_PG),
    # times on the command line and in queries: their unit tests
    "_time": (["test_cli_time.py"], _NO_PG),
    "tlog/": (["test_merkle*.py", "test_tlog*.py", "test_witness*.py", "test_monitor*.py",
               "test_gaps_tlog.py", "test_note_units.py", "test_tiles_units.py", "test_reader_units.py",
               "test_cosig_units.py", "test_collect_units.py", "test_backup.py", "test_storage_lmdb.py"],
              _NO_PG),
    # the RFC 6962 hashing and proofs: their unit tests, and the tree readers and tile exports
    # built on them (every proof a store gives)
    "tlog/_merkle": (["test_merkle*.py", "test_reader_units.py", "test_tiles_units.py", "test_tlog.py"],
                     _NO_PG),
    # asking witnesses to cosign: its unit tests (a scripted witness) and the real witness's
    "tlog/_collect": (["test_collect_units.py", "test_witness.py"], _NO_PG),
    # the HTTP client: its unit tests, and the cosigning and monitor tests that talk through it
    "tlog/_http": (["test_http_units.py", "test_collect_units.py", "test_monitor_units.py"], _NO_PG),
    # the witness: its unit tests and its end-to-end tests (HTTP server, processes, the CLI)
    "tlog/_witness": (["test_witness_units.py", "test_witness.py"], _NO_PG),
    # the monitor: its unit tests and its end-to-end tests on a served log
    "tlog/_monitor": (["test_monitor_units.py", "test_monitor.py"], _NO_PG),
    # (test_backup_archive.py: copy_archive through krepis.backup, a second.) The SIGKILL test (8
    # killed children, past the 30 s timeout on a loaded machine) repeats what the in-process crash
    # tests of test_archive_writer_units.py check at each step (on_step)
    "archive/": (["test_archive*.py", "test_gaps_archive.py", "test_backup_archive.py"],
                 _NO_PG + " and not sigkill_during_archive"),
    # the archive writer's own tests and those of its guarantees (durability, safety, damage, the
    # format-1 upgrade); the readers', copy's and CLI's tests of "archive/" add minutes per survivor
    "archive/_writer": (["test_archive_writer*_units.py", "test_archive.py", "test_gaps_archive.py",
                         "test_archive_format.py", "test_archive_safety.py", "test_archive_durability.py",
                         "test_archive_damage.py"], _NO_PG + " and not sigkill_during_archive"),
    "storage/": (["test_codec.py", "test_outfiles.py", "test_migrate*.py", "test_backup.py",
                  "test_safety_files.py", "test_durable_copies.py", "test_storage_lmdb.py",
                  "test_bad_storage.py", "test_tlog.py"], _NO_PG),
    # choosing an engine from a location, and durable/create/progress handed to it: its unit tests
    # (real LMDB stores and a real server) and the migrations' progress reports
    "storage/__init__": (["test_storage_init_units.py", "test_migrate_units.py",
                          "test_postgres_migrate_units.py"], "test_storage_init_units or progress"),
    # the engine-neutral port (its rules, LogAudit, Query.matches): its unit tests and the
    # storage conformance suite with the files that use its helpers, on LMDB
    "storage/_port": (["test_port_units.py", "test_storage_lmdb.py", "test_merkle.py", "test_tlog.py",
                       "test_safety_fork.py", "test_migrate.py", "test_gaps_storage.py"],
                      _NO_PG + " and not killed_at_random_points and not deno and not bench "
                      "and not interval_torn"),
    # the entry encoding: its own tests, the model's and those of damaged stored entries
    "storage/_codec": (["test_codec.py", "test_model.py", "test_lmdb_damage.py"], _NO_PG),
    # the row checks of every migration: their unit tests and the in-process migration tests
    "storage/_migration": (["test_migration_units.py", "test_migrate_units.py", "test_migrate_rows.py",
                            "test_migrate.py"], _NO_PG + " and not killed_at_random_points"),
    "storage/lmdb/": (_LMDB_TESTS,
                      # the torn interval-mode cases and the migration kill loop take a minute
                      # between them and only repeat what the sync cases and the migration tests check;
                      # the compaction kill loop (up to 200 killed children, past the 30 s timeout
                      # on a loaded machine) checks compaction's own steps
                      _NO_PG + " and not deno and not bench and not interval_torn "
                      "and not killed_at_random_points and not compaction_killed_at_every_step"),
    # the engine's tail and catch-up run under every write and read, so the package's whole
    # selection (power-loss cuts, backup, migration, archive…) runs for each of their surviving
    # mutants: hours on a small machine. These are the tests of the tail itself, of other
    # processes' records (the multi-process and commit-log suites) and of the store's guarantees.
    "storage/lmdb/_catchup": (_ENGINE_TESTS, _NO_PG + " and not deno and not bench and not interval_torn"),
    # the store's files: every open calls them, so the package's selection (about 490 tests,
    # five minutes per survivor) runs for each survivor; these are the tests of the files' own
    # checks and of their guarantees (links, trust, truncation, one writer, other processes)
    "storage/lmdb/_files": (["test_files_units.py", "test_safety_files.py", "test_safety_writers.py",
                             "test_bad_storage.py", "test_lmdb_damage.py", "test_concurrency.py",
                             "test_storage_lmdb.py"],
                            _NO_PG + " and not deno and not bench and not interval_torn"),
    # the tail: its unit tests, catching up with other processes' records (which fills it), the
    # commit log's multi-process and damage tests, and the store's concurrency
    "storage/lmdb/_tail": (["test_tail_units.py", "test_catchup_units.py", "test_commitlog.py",
                            "test_commitlog_damage.py", "test_concurrency.py"],
                           _NO_PG + " and not deno and not bench and not interval_torn"),
    # what one process holds of a store (the pointer, sequence and tree records, the append lock):
    # its unit tests, the refusals of damaged records, and the commit log's multi-process tests
    "storage/lmdb/_state": (["test_state_units.py", "test_lmdb_damage.py", "test_commitlog_damage.py",
                             "test_commitlog.py", "test_concurrency.py"],
                            _NO_PG + " and not deno and not bench and not interval_torn"),
    # opening and closing a store in a process (the registry, the directory lock, the commit log
    # bound at open, the last close): its unit tests, the refusals of damaged or mismatched files,
    # the commit log's multi-process and damage tests, fork safety and concurrency (40 s in all)
    "storage/lmdb/_env": (["test_lmdb_env_units.py", "test_bad_storage.py", "test_lmdb_damage.py",
                           "test_commitlog_damage.py", "test_commitlog.py", "test_safety_fork.py",
                           "test_concurrency.py"],
                          _NO_PG + " and not deno and not bench and not interval_torn"),
    # the store every caller uses (appends, group commit, changes outside the log, write-through,
    # clear, drop_prefix): its unit tests, the shared conformance suite, the refusals of damaged
    # records, fork safety, concurrency, other processes' records and the flush policies (55 s)
    "storage/lmdb/_store": (["test_lmdb_store_units.py", "test_storage_lmdb.py", "test_lmdb_damage.py",
                             "test_bad_storage.py", "test_safety_fork.py", "test_concurrency.py",
                             "test_commitlog.py", "test_flush.py"],
                            _NO_PG + " and not deno and not bench and not interval_torn"),
    # compaction and disk use: their unit tests, the whole-store guarantees (minus the kill loop,
    # whose steps the unit tests take one by one) and the other users of the compacted copy and
    # its check (backup, the format-3 migration)
    "storage/lmdb/_compact": (["test_compact_units.py", "test_compact.py", "test_backup_units.py",
                               "test_migrate3_units.py"],
                              _NO_PG + " and not deno and not bench and not compaction_killed_at_every_step"),
    # LMDB following the log: its unit tests, catching up with (and applying after) other
    # processes, the commit log's damage and gap tests, the refusals of damaged records
    "storage/lmdb/_apply": (["test_apply_units.py", "test_catchup_units.py", "test_commitlog_damage.py",
                             "test_gaps_commitlog.py", "test_lmdb_damage.py"],
                            _NO_PG + " and not deno and not bench and not interval_torn"),
    # the commit log: its unit tests (the parts on a real file, their flushes counted in-process),
    # the store-level recovery and refusals, every damaged byte, the gaps, and the power-loss cases
    # that reach it (a failed flush; one writer's cuts in both modes)
    "storage/lmdb/_commitlog": (["test_commitlog_units.py", "test_commitlog.py", "test_commitlog_damage.py",
                                 "test_gaps_commitlog.py", "test_powerloss.py"],
                                _NO_PG + " and (not test_powerloss or failed_flush "
                                "or sync_survives_power_cuts and 1-thread)"),
    # where a store may live (ownership, modes, symbolic links): the safety and damage tests of
    # store directories and files, and the archive's and backup's, which share these checks
    "storage/lmdb/_paths": (["test_safety_files.py", "test_bad_storage.py", "test_files_units.py",
                             "test_gaps_storage.py", "test_storage_lmdb.py", "test_archive_safety.py",
                             "test_archive_files_units.py", "test_backup_units.py", "test_backup.py",
                             "test_paths_units.py", "test_safety_api.py"],
                            _NO_PG + " and not deno and not bench and not interval_torn"),
    # the adapter's shared helpers: their unit tests, and the damage and query tests that reach
    # them through a store
    "storage/lmdb/_layout": (["test_lmdb_layout_units.py", "test_lmdb_damage.py", "test_bad_storage.py",
                              "test_storage_lmdb.py"],
                             _NO_PG + " and not deno and not bench and not interval_torn"),
    # the format-3 commit log, read only by the migration to format 4
    "storage/lmdb/_legacy_log": (["test_legacy_log_units.py", "test_migrate3_units.py",
                                  "test_migrate_format3.py"], _NO_PG + " and not killed_at_random_points"),
    # taking a store offline: restore, migrate and compact, and its own unit tests
    "storage/lmdb/_offline": (["test_offline_units.py", "test_backup_units.py", "test_compact.py",
                               "test_migrate_units.py", "test_migrate3_units.py"],
                              _NO_PG + " and not deno and not bench and not killed_at_random_points "
                              "and not compaction_killed_at_every_step"),
    # the LMDB store's reads (scans, verify, checkpoints): the adapter's own tests, the damage
    # and gap tests of stored data, the journal's queries and the shared conformance suite
    "storage/lmdb/_reads": (["test_storage_lmdb.py", "test_lmdb_damage.py", "test_journal.py",
                             "test_gaps_storage.py", "test_lmdb_layout_units.py", "test_lmdb_reads_units.py"],
                            _NO_PG + " and not deno and not bench"),
    # the reads over LMDB plus the commit log's tail: its unit tests (a tail held back from LMDB,
    # stale snapshots, injected LMDB failures), LMDB's own reads under them, the storage contract
    # both ways, other processes' records (catching up, the commit log's multi-process tests),
    # applying, the tail, damage and concurrency
    "storage/lmdb/_views": (["test_lmdb_views_units.py", "test_lmdb_reads_units.py", "test_storage_lmdb.py",
                             "test_catchup_units.py", "test_tail_units.py", "test_lmdb_damage.py",
                             "test_concurrency.py", "test_commitlog.py", "test_apply_units.py"],
                            _NO_PG + " and not deno and not bench and not interval_torn"),
    "storage/postgres/": (["test_postgres*.py", "test_guarantees.py", "test_tlog.py",
                           "test_review_findings.py", "test_safety_parity.py", "test_backup.py",
                           "test_migrate.py", "test_archive.py",
                           "test_gaps_storage.py", "test_safety_secrets.py"],
                          "(postgres or secrets) and not restart and not failover "
                          "and not bench and not cli"),
    # the store: every test opens one, so a survivor of its constructor or of _run runs the whole
    # selection. These are the in-process tests that reach it (its own, the shared conformance
    # suite, the engine's guarantees, parity and tlog cases); left out are the archive's (the
    # SIGKILL loop; drop_prefix and the live mark are pinned by the conformance suite), the
    # migration's and backup's PostgreSQL cases (their modules' checks; the format-1 refusal is
    # test_postgres_schema_checks_name_the_location) and the password corpus (the URL parser's)
    "storage/postgres/_store": (["test_postgres.py", "test_postgres_store_units.py", "test_guarantees.py",
                                 "test_review_findings.py", "test_safety_parity.py",
                                 "test_gaps_storage.py", "test_tlog.py"],
                                "postgres and not restart and not failover and not bench and not cli"),
    # the package's lazy names: the tests that call them at run time (not at import)
    "storage/postgres/__init__": (["test_postgres_store_units.py", "test_postgres_migrate_units.py"], None),
    # every PostgreSQL test parses a URL to connect; the parser's rules are pinned by its unit
    # tests, the password corpus and the redaction of _schema's helpers (no server restarts)
    "storage/postgres/_url": (["test_postgres_url_units.py", "test_safety_secrets.py",
                               "test_postgres_schema_units.py"], None),
    "journal/": (["test_journal.py", "test_flush.py", "test_async.py", "test_safety_api.py",
                  "test_concurrency.py", "test_guarantees.py", "test_tlog.py", "test_review_findings.py",
                  "test_kernel.py", "test_archive.py"], _NO_PG + " and not deno"),
    # the journal's verifiable log (checkpoints, proofs, tiles, verify_extends): the tlog tests
    # that go through a journal, the witness's cosigning rounds and the archived-prefix checks
    "journal/_tree": (["test_tlog.py", "test_tlog_trust.py", "test_gaps_tlog.py", "test_tlog_export.py",
                       "test_witness.py", "test_review_findings.py", "test_tlog_checks.py", "test_archive.py",
                       "test_journal_tree_units.py"], _NO_PG),
    # the group commit and the interval syncer: their unit tests (a real store held inside its
    # transaction, the syncer's clock ticked by the test) and the journal's flush and asyncio tests
    "journal/_commit": (["test_journal_commit_units.py", "test_flush.py", "test_async.py"], _NO_PG),
    # fork detection: its unit tests (the child's handler called directly) and the forked children's
    "journal/_fork": (["test_journal_fork_units.py", "test_safety_fork.py"], _NO_PG),
    # the checks of the reads' arguments: their unit tests and the journal's queries
    "journal/_args": (["test_journal_args_units.py", "test_journal.py"], _NO_PG + " and not deno"),
    # retention in the background: its unit tests (a stand-in journal, the clock ticked by the
    # test) and the archive's retention tests on a real journal
    "journal/_retention": (["test_journal_retention_units.py", "test_archive.py"], _NO_PG + " and retention"),
    # krepis.backup with its archive: its unit tests, the archive copy's and the backup's
    "journal/_backup": (["test_journal_backup_units.py", "test_backup_archive.py",
                         "test_archive_copy_units.py"], _NO_PG),
    # the asyncio journal: its unit tests (one writer thread, a drain per batch, close, every read's
    # arguments), its guarantees (test_async.py) and the forked children's
    "journal/_async": (["test_journal_async_units.py", "test_async.py", "test_safety_fork.py"], _NO_PG),
    # the journal class: its unit tests, its own and the API's tests, its flush policies, the
    # guarantees (durability, atomicity, exact counts across threads and processes) and the
    # review findings; the archive's and history's tests repeat the archived reads more slowly
    "journal/_journal": (["test_journal_units.py", "test_journal.py", "test_flush.py", "test_safety_api.py",
                          "test_guarantees.py", "test_concurrency.py", "test_review_findings.py"],
                         _NO_PG + " and not deno"),
    # what every command shares (inert text, the stdout guard, one-line errors, the option types):
    # its unit tests and the in-process (CliRunner) tests of the command families built on it
    "cli/_common": (["test_cli_common_units.py", "test_cli_output_units.py", "test_cli_archive_units.py",
                     "test_cli_backup_units.py", "test_cli_prove_units.py"], _NO_PG),
    # how entries are shown (times, the table, TSV/CSV/JSON, stdout and the pager): its unit tests
    # and the in-process CLI tests that print entries
    "cli/_output": (["test_cli_output_units.py", "test_cli_common_units.py", "test_cli_prove_units.py"],
                    _NO_PG),
    # `krepis prove`: its CLI tests (CliRunner) and the proofs of archived entries
    "cli/_prove": (["test_tlog_prove.py", "test_gaps_tlog.py", "test_cli_seq.py", "test_history.py",
                    "test_archive.py", "test_cli_prove_units.py"], _NO_PG),
    # the entry filters every reading command shares: its unit tests (a real store) and the
    # archive's in-process logs/export test (--archive, --live-only)
    "cli/_select": (["test_cli_select_units.py", "test_archive.py"],
                    "test_cli_select_units or cli_archive_logs_export"),
    # --grep and --request-id resolved (ids, prefixes, globs): its unit tests (real stores, one
    # archived) and the archive's in-process logs/export test
    "cli/_find": (["test_cli_find_units.py", "test_archive.py"],
                  "test_cli_find_units or cli_archive_logs_export"),
    # logs --follow, the export's progress and batched writes: its unit tests (real stores, the
    # waits between polls scripted) and the archive's in-process logs/export test
    "cli/_logs": (["test_cli_logs_units.py", "test_archive.py"],
                  "test_cli_logs_units or cli_archive_logs_export"),
    # krepis stats (--by, the counters, the summary's orders and forms): its unit tests (the
    # command itself on a real store through click's runner)
    "cli/_stats": (["test_cli_stats_units.py"], None),
    # witness serve's handlers, witness status, tlog watch's loop: its unit tests (a real witness
    # and a real journal's tile responder) and the witness's in-process tests (HTTP, status)
    "cli/_witness": (["test_cli_witness_units.py", "test_witness.py"], None),
    # `krepis tlog serve` and the HTTP server the witness shares: the servers started in-process
    "cli/_tlog_serve": (["test_tlog_serve_units.py", "test_tlog_serve.py", "test_witness.py"], _NO_PG),
    "kernel/": (["test_kernel*.py", "test_guarantees.py", "test_plane*.py", "test_model.py",
                 "test_gaps_kernel.py"],
                _NO_PG + " and not cli and not signal_to_krepis and not killed_host"),
    # how a run ends (ScriptError, ScriptInterrupted, ScriptResult): its unit tests and the
    # plane's, which build them from the prelude's reports
    "kernel/_outcome": (["test_outcome_units.py", "test_plane_units.py"], None),
    # what a sandbox may touch (roots, hosts, op_check_permission, Deno's flags): its unit tests
    # and the plane's pure-function tests; the sandbox tests that start Deno take minutes
    "kernel/_permissions": (["test_permissions_units.py", "test_plane_units.py"], None),
    # the wire to Deno (frames, replies, malformed messages): its unit tests and the plane's,
    # on real pipes; the protocol tests that start Deno take minutes per survivor
    "kernel/_channel": (["test_channel_units.py", "test_plane_units.py"], None),
    # the Landlock confinement: its unit tests, which confine a forked child of the test process
    # (the plane applies it between fork and exec, where mutmut cannot see it)
    "kernel/_landlock": (["test_landlock_units.py"], None),
    # the Kernel (ops, context, stats, lifecycle): its own tests and the kernel gaps' (6 s in all)
    "kernel/_kernel": (["test_kernel_units.py", "test_kernel.py", "test_kernel_stats.py",
                        "test_kernel_interrupts.py", "test_gaps_kernel.py"],
                       _NO_PG + " and not cli and not signal_to_krepis and not killed_host"),
    # the Deno plane (the run, its limits, imports, the sandbox, signals): its in-process tests
    # (25 s in all); the stack-trace and memory tests repeat the sandbox's checks more slowly
    "kernel/_plane": (["test_plane_units.py", "test_plane.py", "test_plane_ops.py", "test_plane_limits.py",
                       "test_plane_file_urls.py", "test_plane_sandbox.py", "test_gaps_kernel.py",
                       "test_kernel_interrupts.py"],
                      _NO_PG + " and not cli and not signal_to_krepis and not killed_host"),
    "web/": (["test_web.py"], None),
    # the console's query parameters: their unit tests, and the served console's reads that parse
    # them (the trail, paging, the ops summary and series, the 400s naming a bad parameter)
    "web/_filters": (["test_web_filters_units.py", "test_web.py", "test_web_hardening.py"],
                     "test_web_filters_units or trail or paging or prefix_and_text or bad_input "
                     "or a_request_is or ops_summary or series or errors_name or summary_is"),
    # what the pages read: their unit tests (real stores, every read called directly), and the
    # served console's reads (trail, request, ops, series, counters, proofs, budgets, 400s)
    "web/_views": (["test_web_views_units.py", "test_web.py", "test_web_hardening.py"],
                   "test_web_views_units or trail or paging or prefix_and_text or bad_input or a_request_is "
                   "or ops_summary or series or counters or leaves or errors_name or summary_is "
                   "or heavy_reads or prefix_the_console"),
    # serving the console: its unit tests (serve run in a thread of the test, real sockets); the
    # other serving tests run `krepis serve` in a subprocess. Left out: the tests that serve the
    # access log through uvicorn — under mutmut its async __call__ is a plain function returning
    # a coroutine, which uvicorn takes for the ASGI2 interface, so no server starts; the access
    # log is called directly by test_the_access_log_line instead
    "web/_server": (["test_web_server_units.py"], "not serve_with_the_access_log"),
    # the in-process (CliRunner) tests: test_cli.py and test_tlog_cli.py start `krepis` (and Go) in
    # subprocesses only, which mutmut never selects for a mutant, so they would only slow the run
    "cli/": (["test_cli_*.py", "test_tlog_trust.py", "test_tlog_prove.py", "test_tlog_checks.py",
              "test_gaps_tlog.py", "test_tlog_serve.py", "test_archive.py", "test_archive_safety.py",
              "test_backup_archive.py", "test_compact.py", "test_backup.py"],
             # (the copy holds no README or docs/ for the markdown-table check)
             _NO_PG + " and not every_markdown_table"),
}


def modules() -> list[str]:
    """Every source module that has code to mutate, as ``package/_name`` paths."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).with_suffix("").as_posix()
        if re.search(r"^\s*(def|class) ", path.read_text(), re.M):
            out.append(name)
    return out


def selection(module: str) -> tuple[str, list[str], str | None]:
    """``module``'s source path (relative to the root), its test files and -k expression."""
    prefix = max((p for p in SELECTIONS if module.startswith(p)), key=len)
    patterns, select = SELECTIONS[prefix]
    tests = sorted({f.name for pattern in patterns for f in (ROOT / "tests").glob(pattern)})
    return f"src/krepis/{module}.py", tests, select


def _target(module: str) -> Path:
    return ROOT / ".mutation" / module.replace("/", ".")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _extract(target: Path, *paths: str) -> None:
    archive = subprocess.run(["git", "-c", "tar.umask=0022", "archive", "HEAD", *paths], cwd=ROOT,
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def refresh(target: Path) -> None:
    """Before a resumed run (``--keep``): the committed code and tests replace the copy's, so the
    mutants not run yet meet the current tests (mutmut copies them into ``mutants/`` and records
    which functions new tests call). Mutants of functions whose source changed are made again
    by mutmut; those already run keep their verdicts. The run's code is now HEAD's, so
    ``--record`` names HEAD (``COMMIT``)."""
    _extract(target, "src", "tests")
    (target / "COMMIT").write_text(_head() + "\n")


def prepare(module: str) -> Path:
    """A copy of the committed tree in .mutation/MODULE with that module's mutmut settings."""
    source, tests, select = selection(module)
    target = _target(module)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    _extract(target, "src", "tests", "pyproject.toml")
    pyproject = (target / "pyproject.toml").read_text()
    start = pyproject.index("[tool.mutmut]")
    end = pyproject.find("\n[", start + 1)
    section = ("[tool.mutmut]\n"
               f"source_paths = {_toml_list([source])}\n"
               f"pytest_add_cli_args_test_selection = {_toml_list([f'tests/{t}' for t in tests])}\n"
               # a mutant that deadlocks uses no CPU, so mutmut's CPU-time limit never ends it; the
               # thread method also ends one blocked inside C code (an LMDB lock wait), which the
               # default alarm signal cannot interrupt
               "pytest_add_cli_args = " + _toml_list(["--timeout=30", "--timeout-method=thread"]
                                                     + (["-k", select] if select else [])) + "\n"
               'also_copy = ["src/krepis/", "tests/"]\n'
               # a mutant mypy --strict rejects is caught by CI (.ci/run) before any test runs
               "type_check_command = " + _toml_list(["mypy", "--strict", "--no-warn-unused-ignores",
                                                     "--output", "json", source]) + "\n")
    (target / "pyproject.toml").write_text(pyproject[:start] + section +
                                           (pyproject[end:] if end >= 0 else ""))
    (target / "COMMIT").write_text(_head() + "\n")  # the code mutated: what --record names
    return target


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")  # "…" or '…'
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|TRUNCATE|LOCK|FROM|WHERE|ORDER BY|VALUES|SET|"
                  r"ON CONFLICT|RETURNING|UNION|LIMIT|CREATE|ALTER|BEGIN|COMMIT|AND|ANY|ASC|DESC)\b")


def _codec(literal: str) -> str | None:
    try:
        return codecs.lookup(literal[1:-1]).name
    except LookupError:
        return None


def _codec_case_only(old: str, new: str) -> bool:
    """The lines differ only in the letter case inside one quoted codec name (also one nested in
    an f-string's replacement field, which the string matching above does not split out)."""
    differ = [k for k in range(len(old)) if old[k] != new[k]]
    start = max(old.rfind("'", 0, differ[0]), old.rfind('"', 0, differ[0]))
    if start < 0:
        return False
    end = old.find(old[start], differ[-1] + 1)
    if end < 0:
        return False
    literal = old[start:end + 1]
    return _codec(literal) is not None and _codec(literal) == _codec(new[start:end + 1])


def equivalent_by_rule(removed: list[str], added: list[str]) -> str | None:
    """Why a mutant is equivalent when a mechanical rule shows it, else None. Two rules, both for
    mutants that only change the letter case of one string: SQL text (keywords and unquoted
    identifiers are case-insensitive; SQL text is a string holding an upper-case keyword, as
    krepis writes its SQL, while its messages are lower case; a quoted literal like ``'format'``
    must keep its case) and codec names (``"UTF-16"`` is ``"utf-16"``: Python looks codecs up
    case-insensitively)."""
    if not removed or len(removed) != len(added):
        return None
    reasons = set()
    for old, new in zip(removed, added, strict=True):
        if old == new or old.lower() != new.lower():
            return None
        if _codec_case_only(old, new):
            reasons.add("codec name case")
            continue
        old_strings, new_strings = _STRING.findall(old), _STRING.findall(new)
        if len(old_strings) != len(new_strings) or _STRING.sub("", old) != _STRING.sub("", new):
            return None
        for a, b in zip(old_strings, new_strings, strict=True):
            if a == b:
                continue
            if _codec(a) is not None and _codec(a) == _codec(b):
                reasons.add("codec name case")
            elif _SQL.search(a) and re.findall(r"'[^']*'", a) == re.findall(r"'[^']*'", b):
                reasons.add("SQL case")
            else:
                return None
    return " and ".join(sorted(reasons)) or None


def _survivor_diffs(target: Path, mutmut: str) -> list[tuple[str, list[str], list[str]]]:
    """Each mutant that survived (or that no test reached) with the lines it removed and added."""
    listing = subprocess.run([mutmut, "results"], cwd=target, capture_output=True, text=True).stdout
    names = [line.split(": ")[0].strip() for line in listing.splitlines()
             if line.endswith((": survived", ": no tests"))]
    out = []
    for name in names:
        diff = subprocess.run([mutmut, "show", name], cwd=target, capture_output=True, text=True).stdout
        lines = diff.splitlines()
        out.append((name, [line[1:] for line in lines if line.startswith("-") and not line.startswith("---")],
                    [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]))
    return out


def recheck(target: Path, mutmut: str, tests: list[str], env: dict[str, str]) -> int:
    """Run TESTS (copied from the working tree) against each survivor of the last run that no
    rule shows equivalent: mutmut's own check for one mutant (MUTANT_UNDER_TEST), for tests
    written after the run. The tests must pass without a mutant first."""
    for test in tests:  # a file, or one test in it (tests/test_x.py::test_y)
        shutil.copy2(ROOT / test.split("::")[0], target / "mutants" / test.split("::")[0])
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               "--timeout=60", *tests]
    clean = subprocess.run(command, cwd=target / "mutants", env={**env, "MUTANT_UNDER_TEST": ""},
                           capture_output=True, text=True)
    if clean.returncode != 0:
        print(clean.stdout[-3000:])
        return 1
    killed: list[str] = []
    left: list[str] = []
    for name, removed, added in _survivor_diffs(target, mutmut):
        if equivalent_by_rule(removed, added):
            continue
        run = subprocess.run(command, cwd=target / "mutants", env={**env, "MUTANT_UNDER_TEST": name},
                             capture_output=True, text=True)
        (killed if run.returncode != 0 else left).append(name)
        print(f"{'killed' if run.returncode != 0 else 'survived'}: {name}", flush=True)
    print(f"{len(killed)} killed by {' '.join(tests)}, {len(left)} still survive")
    _mark_killed(target, killed)
    return 0


def _mark_killed(target: Path, names: list[str]) -> None:
    """Record in mutmut's results that the tests written after the run kill ``names`` (so
    ``--score`` and ``--record`` count them): mutmut keeps each mutant's exit code in the
    mutated file's ``.meta``, 1 meaning a test failed."""
    for meta in (target / "mutants" / "src").rglob("*.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        hits = [name for name in names if name in codes]
        if hits:
            for name in hits:
                codes[name] = 1
            meta.write_text(json.dumps(data, indent=4))


def survivors(target: Path, mutmut: str) -> int:
    """Print every surviving mutant's changed lines, marking those a rule shows equivalent, and
    under each one listed in ``tests/mutation_equivalents.txt`` the reason given there — to be
    read against the diff: mutmut numbers a function's mutants in order, so after the function
    changed, a listed name may belong to another mutant than the one its reason describes."""
    by_rule = listed = 0
    reasons = equivalents()
    survived = _survivor_diffs(target, mutmut)
    for name, removed, added in survived:
        rule = equivalent_by_rule(removed, added)
        by_rule += rule is not None
        print(f"equivalent ({rule}): {name}" if rule else f"survived: {name}")
        if not rule:
            print("\n".join([f"  - {line.strip()}" for line in removed] +
                            [f"  + {line.strip()}" for line in added]))
            if name in reasons:
                listed += 1
                print(f"  listed as equivalent: {reasons[name]}")
    print(f"{len(survived)} survived, of which {by_rule} are equivalent by rule "
          f"(letter case of SQL or codecs) and {listed} listed as equivalent (check each reason "
          "against its diff)")
    return 0


#: Imported by every Python process started with the run's environment. While mutmut records
#: which tests call which function (MUTANT_UNDER_TEST=stats), a test's child process cannot find
#: mutmut's settings (it runs elsewhere): its recording of a call must not fail the child.
_CHILD_SITE = """\
import os
if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    try:
        import mutmut.mutation.trampoline as _trampoline
    except ImportError:
        pass
    else:
        _record = _trampoline.record_trampoline_hit

        def _tolerant(*args, **kwargs):
            try:
                _record(*args, **kwargs)
            except Exception:
                pass

        _trampoline.record_trampoline_hit = _tolerant
"""


def _statuses(target: Path, mutmut: str) -> dict[str, str]:
    """Every mutant of the last run in ``target`` → mutmut's status for it, except that a test
    process the mutant made abort (SIGABRT: LMDB's own consistency checks end the process when
    handed a wrong page or cursor) is "aborted", a kill, as mutmut counts a segfault: mutmut
    itself calls an unknown exit code "suspicious"."""
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=target, capture_output=True,
                             text=True).stdout
    out = {}
    for line in listing.splitlines():
        if ": " in line:
            name, status = line.rsplit(": ", 1)
            out[name.strip()] = status.strip()
    for meta in (target / "mutants" / "src").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code == -signal.SIGABRT and name in out:
                out[name] = "aborted"
    return out


def score(target: Path, mutmut: str) -> int:
    """Count the last run's mutants by status (mutmut's own statuses)."""
    counts: dict[str, int] = {}
    for status in _statuses(target, mutmut).values():
        counts[status] = counts.get(status, 0) + 1
    total = sum(counts.values())
    print(", ".join(f"{status}: {n}" for status, n in sorted(counts.items())), f"(total {total})")
    return 0


# -- the score table of docs/testing.md ------------------------------------------------------
TABLE_START = "<!-- mutation-scores:start -->"
TABLE_END = "<!-- mutation-scores:end -->"
COLUMNS = ["module", "mutants", "run", "killed", "equivalent", "not killed", "score", "run on", "code of",
           "status"]
_KILLED = {"killed", "timeout", "caught by type check", "segfault", "aborted"}
_NOT_RUN = {"not checked", "skipped"}


def equivalents() -> dict[str, str]:
    """``tests/mutation_equivalents.txt``: mutant name → why no caller can tell it apart."""
    out = {}
    for line in EQUIVALENTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition("#")
            out[name.strip()] = reason.strip()
    return out


def read_table(text: str) -> dict[str, dict[str, str]]:
    """The rows of the score table in ``text``, by module."""
    body = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)]
    rows = {}
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        row = dict(zip(COLUMNS, cells, strict=True))
        row["module"] = row["module"].strip("`")
        rows[row["module"]] = row
    return rows


def _format_table(rows: dict[str, dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * 6 + "---|---|---|"]
    for module in sorted(rows):
        row = rows[module]
        lines.append("| " + " | ".join([f"`{module}`"] + [row[c] for c in COLUMNS[1:]]) + " |")
    return "\n".join(lines)


def state(module: str, commit: str) -> str:
    """``current`` when the module's source is the same as in ``commit`` (the code its recorded
    run mutated), ``stale`` when it changed since, ``never run`` without a run."""
    if commit in ("", "—"):
        return "never run"
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        return "unknown (commit not in this clone)"
    same = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", f"src/krepis/{module}.py"],
                          cwd=ROOT, capture_output=True)
    return "current" if same.returncode == 0 else "stale"


def table_rows() -> dict[str, dict[str, str]]:
    """The table as it should read now: every module, recorded figures kept, states from git."""
    recorded = read_table(DOC.read_text())
    rows = {}
    for module in modules():
        row = recorded.get(module) or dict.fromkeys(COLUMNS[1:], "—")
        row = {**row, "module": module}
        row["status"] = state(module, row["code of"])
        rows[module] = row
    return rows


def write_table(rows: dict[str, dict[str, str]]) -> None:
    text = DOC.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    DOC.write_text(text[:start] + "\n" + _format_table(rows) + "\n" + text[end:])


def status(write: bool) -> int:
    rows = table_rows()
    if write:
        write_table(rows)
    width = max(len(m) for m in rows)
    for module, row in rows.items():
        print(f"{module:<{width}}  {row['score']:>8}  {row['run on']:>10}  {row['status']}")
    stale = [m for m, r in rows.items() if r["status"] != "current"]
    print(f"{len(rows) - len(stale)} of {len(rows)} modules current; {len(stale)} stale or never run")
    return 0


def record(module: str, target: Path, mutmut: str) -> int:
    """Write the last run's counts of ``module`` into the table (see ``COLUMNS``): the killed
    include timeouts and mutants ``mypy --strict`` rejects; equivalents are survivors listed in
    ``tests/mutation_equivalents.txt`` or shown by rule; the score is killed ÷ (run − equivalent)."""
    statuses = _statuses(target, mutmut)
    if not statuses:
        print(f"no run of {module} in {target}")
        return 1
    listed = equivalents()
    by_rule = {name for name, removed, added in _survivor_diffs(target, mutmut)
               if equivalent_by_rule(removed, added)}
    run = [n for n, st in statuses.items() if st not in _NOT_RUN]
    killed = sum(statuses[n] in _KILLED for n in run)
    equivalent = sum(statuses[n] not in _KILLED and (n in listed or n in by_rule) for n in run)
    rest = len(run) - killed - equivalent
    rows = table_rows()
    commit = (target / "COMMIT").read_text().strip()
    rows[module] = {
        "module": module, "mutants": str(len(statuses)), "run": str(len(run)), "killed": str(killed),
        "equivalent": str(equivalent), "not killed": str(rest),
        "score": f"{100 * killed / max(1, len(run) - equivalent):.1f} %",
        "run on": subprocess.run(["date", "-u", "+%Y-%m-%d"], capture_output=True, text=True).stdout.strip(),
        "code of": commit[:12], "status": state(module, commit[:12]),
    }
    write_table(rows)
    print(f"{module}: {rows[module]}")
    return 0


def sample(target: Path, mutmut: str, source: str, env: dict[str, str], size: int, seed: int,
           max_children: int) -> int:
    """Run a seeded random sample of ``size`` of the module's mutants, for modules whose complete
    run takes hours on a small machine. The first call generates the mutants and the coverage
    stats (a run that selects nothing), then the sample runs. The sample is the first ``size``
    of a seeded shuffle of all the module's mutants, so with ``--keep`` the same call finishes
    an interrupted sample and a larger ``size`` extends it; those already run are not run again
    and keep their verdicts."""
    meta = target / "mutants" / (source + ".meta")
    if not meta.exists():
        subprocess.run([mutmut, "run", "--max-children", str(max_children), "generate-only"],
                       cwd=target, env=env, capture_output=True)
    if not meta.exists():
        print(f"mutmut generated no mutants for {source}")
        return 1
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    keys = sorted(codes)
    drawn = random.Random(seed).sample(keys, len(keys))[:size]
    chosen = [key for key in drawn if codes[key] is None]  # not run yet
    print(f"sample of {len(drawn)} of {len(keys)} mutants (seed {seed}): running the {len(chosen)} "
          "not run yet", flush=True)
    if not chosen:
        return 0
    return subprocess.run([mutmut, "run", "--max-children", str(max_children), *chosen], cwd=target,
                          env=env).returncode


#: A pytest plugin (``PYTEST_ADDOPTS=-p krepis_mutation_order``): mutmut hands pytest a mutant's
#: tests in no particular order and stops at the first failure, so a mutant the fast unit tests
#: kill could wait for minutes of power-loss cuts first. While a mutant is under test, the tests
#: run fastest first (by the durations mutmut measured); the verdicts are the same.
_ORDER_PLUGIN = """\
import json
import os

_DURATIONS = None


def pytest_collection_modifyitems(session, config, items):
    global _DURATIONS
    if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "fail", "list_all_tests",
                                                   "mutant_generation"):
        return
    if _DURATIONS is None:
        try:
            with open("mutmut-stats.json") as f:
                _DURATIONS = json.load(f)["duration_by_test"]
        except (OSError, ValueError, KeyError):
            _DURATIONS = {}
    items.sort(key=lambda item: _DURATIONS.get(item.nodeid, 0.0))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", help="a source module, e.g. tlog/_note (see --status)")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", action="store_true",
                        help="resume the run in .mutation/MODULE instead of starting afresh")
    parser.add_argument("--survivors", action="store_true",
                        help="list the survivors of the last run in .mutation/MODULE with their diffs")
    parser.add_argument("--recheck", nargs="+", metavar="TEST",
                        help="run these test files (tests/test_x.py) against each survivor of the last run")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="run a seeded random sample of N mutants (resumable with --keep)")
    parser.add_argument("--seed", type=int, default=14, help="the seed of --sample")
    parser.add_argument("--score", action="store_true",
                        help="count the last run's mutants in .mutation/MODULE by status")
    parser.add_argument("--record", action="store_true",
                        help="write the last run's counts into the score table of docs/testing.md")
    parser.add_argument("--status", action="store_true",
                        help="every module's last score and whether it is current, stale or never run")
    parser.add_argument("--write", action="store_true", help="with --status: update the table's states")
    args = parser.parse_args()
    if args.status:
        return status(args.write)
    if args.module not in modules():
        parser.error(f"unknown module {args.module!r}; one of: {', '.join(modules())}")
    target = _target(args.module)
    mutmut = shutil.which("mutmut", path=os.path.dirname(sys.executable)) or "mutmut"
    if args.survivors:
        return survivors(target, mutmut)
    if args.score:
        return score(target, mutmut)
    if args.record:
        return record(args.module, target, mutmut)
    # a SIGTERM still stops the PostgreSQL server below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not (args.keep or args.recheck) or not target.exists():
        target = prepare(args.module)
    elif args.keep:
        refresh(target)
    env = dict(os.environ)
    # child processes started by the tests import the mutated copy and run the same mutant
    site = target / "site"
    site.mkdir(exist_ok=True)
    # before mutmut starts: a PYTHONPATH entry missing at start-up is never searched later
    (target / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_CHILD_SITE)
    (site / "krepis_mutation_order.py").write_text(_ORDER_PLUGIN)
    env["PYTEST_ADDOPTS"] = " ".join(filter(None, [env.get("PYTEST_ADDOPTS"), "-p krepis_mutation_order"]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(target / "mutants" / "src"),
                                                      env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("KREPIS_POWERLOSS_CUTS", "8")  # a surviving mutant runs every selected test
    server: Path | None = None
    if args.module.startswith("storage/postgres/") and "KREPIS_TEST_POSTGRES" not in env:
        server = Path(tempfile.mkdtemp(prefix="krepis-mutation-pg-")) / "server"
        server.parent.chmod(0o755)  # the server runs as 'nobody' when we are root
        started = subprocess.run([sys.executable, str(ROOT / "tests" / "pg.py"), "start", str(server)],
                                 check=True, capture_output=True, text=True).stdout
        env["KREPIS_TEST_POSTGRES"] = started.strip().split("=", 1)[1]
    try:
        if args.recheck:
            return recheck(target, mutmut, args.recheck, env)
        if args.sample:
            return sample(target, mutmut, selection(args.module)[0], env, args.sample, args.seed,
                          args.max_children)
        return subprocess.run([mutmut, "run", "--max-children", str(args.max_children)], cwd=target,
                              env=env).returncode
    finally:
        if server is not None:
            subprocess.run([sys.executable, str(ROOT / "tests" / "pg.py"), "stop", str(server)])
            shutil.rmtree(server.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
