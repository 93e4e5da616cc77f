"""Cutting a model's repetition loops out of its text as the text streams, in the reference parser's two passes: a
run of more than REPEATS of one character becomes that character (CharacterRuns), then in what that leaves a run of a
character, or of a pattern of up to MAX_PATTERN characters, that reaches REPEATS copies in a row keeps its first copy
(RepetitionFilter). What a run still growing could drop is held back, so nothing released is ever taken back, and
the released pieces add up to the text the whole would give."""

import re

REPEATS = 20
MAX_PATTERN = 20
CUT_AT = [(REPEATS - 1) * size for size in range(1, MAX_PATTERN + 1)]  # a run of period s holds REPEATS copies
LONG_RUN = re.compile(rf"(.)\1{{{REPEATS},}}", re.DOTALL)  # more than REPEATS of one character
# the characters seen that are kept: every run shorter than REPEATS - 1 (the fewest a run at REPEATS copies has),
# with the MAX_PATTERN characters before it, lies inside them
RECENT = 2 * MAX_PATTERN


class CharacterRuns:
    """The first pass: a run of more than REPEATS of one character becomes that character, the context around it
    kept (the pattern pass after it sees the text on both sides joined). A run's first character goes out at once;
    the rest wait until the run ends (out, if it stayed within REPEATS) or passes REPEATS (dropped)."""

    __slots__ = ("char", "length")

    def __init__(self) -> None:
        self.char = ""  # the character of the run the text so far ends in
        self.length = 0  # that run's length, its first character (already out) included

    def push(self, text: str) -> str:
        char, length, n = self.char, self.length, len(text)
        if length == 1 and 0 < n <= REPEATS and text[0] != char and (n == 1 or text[-2] != text[-1]):
            # the common case: nothing waits, and `text` neither goes on with the run before nor ends in a run
            self.char = text[-1]
            return text
        start = 0
        while start < n and text[start] == char:  # the run before goes on
            start += 1
        if start == n:
            self.length = length + n
            return ""
        out = char * (length + start - 1) if length + start <= REPEATS else ""  # the run before ended
        tail = n - 1  # where the run `text` ends in begins
        while tail > start and text[tail - 1] == text[-1]:
            tail -= 1
        middle = text[start:tail + 1]  # ends with that run's first character
        self.char, self.length = text[-1], n - tail
        return out + (LONG_RUN.sub(r"\1", middle) if len(middle) > REPEATS else middle)

    def finish(self) -> str:
        rest = self.char * (self.length - 1) if self.length <= REPEATS else ""
        self.char, self.length = "", 0
        return rest


class RepetitionFilter:

    __slots__ = ("character_runs", "recent", "runs", "headroom", "held", "pattern", "partial")

    def __init__(self) -> None:
        self.character_runs = CharacterRuns()
        self._restart()
        self.pattern = ""  # a run cut to its first copy, whose further whole copies are being dropped
        self.partial = ""  # the start of a copy of `pattern` that may yet be completed (and dropped)

    def _restart(self) -> None:
        """Forgets the context: a cut run's end starts the text afresh, as the reference parser's recursion does."""
        self.recent = ""  # the last RECENT characters seen
        # runs[s - 1]: how many of the latest characters equal the character s places before them; those are the
        # second and later copies of a pattern of s characters, which a longer run would drop. Kept while a run
        # nears REPEATS copies; None while every run is short, when the longest is found in `recent` (longest_run)
        self.runs: list[int] | None = None
        self.headroom = REPEATS - 1  # a push shorter than this cannot bring any run to REPEATS copies
        self.held = ""  # seen, not yet released

    def push(self, text: str) -> str:
        text = self.character_runs.push(text)
        if not self.pattern and 0 < len(text) < self.headroom:
            # the common case: no run can reach REPEATS copies in `text` (a loop still building included)
            return self._take_short_of_a_loop(text)
        return self._push_patterns(text)

    def _push_patterns(self, text: str) -> str:
        out: list[str] = []
        while text:  # a long text (a whole transcript at once): in stretches, each on the fastest path it allows
            if self.pattern:
                if self._drops_whole(text):
                    break
                taken = 0  # one at a time, up to the character that leaves the cut run's copies
                while self.pattern and taken < len(text):
                    self._take(text[taken], out)
                    taken += 1
            elif self.headroom > 1:
                taken = self.headroom - 1
                out.append(self._take_short_of_a_loop(text[:taken]))
            else:
                taken = 1
                self._take(text[0], out)
            text = text[taken:]
        return "".join(out)

    def _drops_whole(self, text: str) -> bool:
        """`_take` of each character of `text` while a cut run's copies are being dropped, at once, if `text` only
        goes on with those copies (a loop the model stays in); False, taking nothing, if it leaves them."""
        size, at = len(self.pattern), len(self.partial)
        if not (self.pattern[at:] + self.pattern * (len(text) // size + 1)).startswith(text):
            return False
        self.partial = self.pattern[:(at + len(text)) % size]
        return True

    def _take_short_of_a_loop(self, text: str) -> str:
        """`_take` of each character of `text`, at once; returns what it releases."""
        window = self.recent + text
        self.recent = window[-RECENT:]
        if self.runs is None:
            longest = longest_run(window)
            # every run is at most `longest`, and REPEATS copies need REPEATS - 1 at the least
            self.headroom = REPEATS - 1 - longest
        else:
            longest = self._count_runs(window, len(text))
            if longest <= REPEATS // 2:  # short again: found in `recent` from here on
                self.runs, self.headroom = None, REPEATS - 1 - longest
        held = self.held + text
        if not longest:  # no run: nothing is held back (most pushes)
            self.held = ""
            return held
        releasable = len(held) - longest
        if releasable <= 0:
            self.held = held
            return ""
        self.held = held[releasable:]
        return held[:releasable]

    def _count_runs(self, window: str, length: int) -> int:
        """Brings `runs` and `headroom` past the last `length` characters of `window`; returns the longest run.
        Only periods whose run reaches the last character can be non-zero afterwards, and those are found by
        searching for that character."""
        assert self.runs is not None
        n, seen = len(window), len(window) - length
        last, lowest = window[-1], n - 1 - MAX_PATTERN if n > MAX_PATTERN else 0
        j = window.rfind(last, lowest, n - 1)
        runs = [0] * MAX_PATTERN
        longest, headroom = 0, REPEATS - 1  # the period-1 run's headroom, if it is 0; other zero runs have more
        while j >= 0:
            size = n - 1 - j
            # the first character tells most pushes apart before two slices are made and compared
            if (seen >= size and window[n - length] == window[n - length - size]
                    and window[n - length:] == window[n - length - size:n - size]):
                run = self.runs[size - 1] + length  # the whole of the new text continues the run
            else:
                run = 1
                while run < length and n - 1 - run - size >= 0 and window[n - 1 - run] == window[n - 1 - run - size]:
                    run += 1
            runs[size - 1] = run
            if run > longest:
                longest = run
            if CUT_AT[size - 1] - run < headroom:
                headroom = CUT_AT[size - 1] - run
            j = window.rfind(last, lowest, j)
        self.runs, self.headroom = runs, headroom
        return longest

    def finish(self) -> str:
        """The rest, once no more text will come: a run that never reached REPEATS copies is kept whole, and so is
        the unfinished copy after a cut one."""
        last = self._push_patterns(self.character_runs.finish())
        rest = last + self.held + self.partial
        self._restart()
        self.pattern, self.partial = "", ""
        return rest

    def _take(self, char: str, out: list[str]) -> None:
        if self.pattern:
            if char == self.pattern[len(self.partial)]:
                self.partial += char
                if len(self.partial) == len(self.pattern):
                    self.partial = ""  # one more whole copy: dropped
                return
            rest, self.pattern, self.partial = self.partial + char, "", ""
            for again in rest:
                self._take(again, out)
            return
        if self.runs is None:
            self.runs = runs_in(self.recent)
        # recent[::-1] is the character 1, 2, ... places back; sizes longer than what was seen have no run
        runs = [run + 1 if before == char else 0 for run, before in zip(self.runs, self.recent[::-1])]
        self.runs = runs + [0] * (MAX_PATTERN - len(runs))
        longest = max(self.runs)
        self.headroom = min(limit - run for run, limit in zip(self.runs, CUT_AT))
        self.recent = self.recent[1 - RECENT:] + char
        self.held += char
        if longest >= REPEATS - 1:  # the fewest a run can have at REPEATS copies (of one character)
            for size, (copies, cut_at) in enumerate(zip(self.runs, CUT_AT), start=1):
                if copies == cut_at:  # REPEATS copies in a row: keep the first, drop the rest
                    out.append(self.held[:len(self.held) - copies])
                    self.pattern = self.recent[-size:]  # the run is whole copies: the last is the first
                    self._restart()
                    return
        releasable = len(self.held) - longest
        if releasable > 0:
            out.append(self.held[:releasable])
            self.held = self.held[releasable:]


def longest_run(text: str) -> int:
    """The longest run among the periods 1 to MAX_PATTERN at the end of `text`: the most of its last characters that
    equal the character s places before them, for some s. That is the longest ending of `text` found again ending
    1 to MAX_PATTERN places earlier, and an ending found there is found there shortened too, so the endings are tried
    in growing length (str.find, no slices of the text searched)."""
    n = len(text)
    lowest = n - MAX_PATTERN - 1  # where a copy of the last character MAX_PATTERN places back is
    if text.find(text[-1], lowest if lowest > 0 else 0, n - 1) < 0:  # most pushes end here or after one more
        return 0
    longest = 1
    while longest < n - 1:
        lowest -= 1
        if text.find(text[n - longest - 1:], lowest if lowest > 0 else 0, n - 1) < 0:
            break
        longest += 1
    return longest


def runs_in(text: str) -> list[int]:
    """Each period's run at the end of `text`, as RepetitionFilter.runs holds them."""
    runs = []
    for size in range(1, MAX_PATTERN + 1):
        run = 0
        while run + size < len(text) and text[-1 - run] == text[-1 - run - size]:
            run += 1
        runs.append(run)
    return runs
