"""The strace reader the flush-counting tests share (tests/stracekit.py): a call another
thread split in two is one line again, where it began."""

from __future__ import annotations

from stracekit import joined


def test_a_call_split_by_another_thread_is_joined_where_it_began() -> None:
    text = "\n".join([
        '10949 pwrite64(10</s/commit.log>, "KRC2"..., 1048, 9336 <unfinished ...>',
        "10950 fdatasync(7</s/data.mdb>) = 0",
        "10949 <... pwrite64 resumed>) = 1048",
        "10950 fsync(7</s/data.mdb> <unfinished ...>",
        "10950 <... fsync resumed>) = 0",
    ])
    assert joined(text) == [
        '10949 pwrite64(10</s/commit.log>, "KRC2"..., 1048, 9336) = 1048',
        "10950 fdatasync(7</s/data.mdb>) = 0",
        "10950 fsync(7</s/data.mdb>) = 0",
    ]


def test_strace_writing_to_stderr_names_threads_in_brackets() -> None:
    text = "\n".join([
        "[pid  3001] fdatasync(5</s/commit.log> <unfinished ...>",
        "write(2</dev/pts/0>, \"x\", 1) = 1",
        "[pid  3001] <... fdatasync resumed>) = 0",
        '[pid  3002] openat(AT_FDCWD</s>, "data.mdb", O_RDWR|O_DSYNC <unfinished ...>',
        "[pid  3001] fsync(6</s/x>) = 0",
        "[pid  3002] <... openat resumed>) = 9</s/data.mdb>",
    ])
    assert joined(text) == [
        "[pid  3001] fdatasync(5</s/commit.log>) = 0",
        "write(2</dev/pts/0>, \"x\", 1) = 1",
        '[pid  3002] openat(AT_FDCWD</s>, "data.mdb", O_RDWR|O_DSYNC) = 9</s/data.mdb>',
        "[pid  3001] fsync(6</s/x>) = 0",
    ]


def test_a_resumed_part_whose_start_is_not_in_the_text_is_dropped() -> None:
    assert joined("12 <... write resumed>) = 3\n12 fsync(3</a>) = 0") == ["12 fsync(3</a>) = 0"]
