"""Cutting a model's repetition loops out of its text as the text streams: a run of a character, or of a pattern of
up to MAX_PATTERN characters, that reaches REPEATS copies in a row keeps its first copy (the rule of the reference
parser). What a run still growing could drop is held back, so nothing released is ever taken back, and the
released pieces add up to the text the whole would give."""

REPEATS = 20
MAX_PATTERN = 20


class RepetitionFilter:

    def __init__(self) -> None:
        self._restart()
        self.pattern = ""  # a run cut to its first copy, whose further whole copies are being dropped
        self.partial: list[str] = []  # the start of a copy of `pattern` that may yet be completed (and dropped)

    def _restart(self) -> None:
        """Forgets the context: a cut run's end starts the text afresh, as the reference parser's recursion does."""
        self.recent: list[str] = []  # the last MAX_PATTERN characters seen
        # runs[s - 1]: how many of the latest characters equal the character s places before them; those are the
        # second and later copies of a pattern of s characters, which a longer run would drop
        self.runs = [0] * MAX_PATTERN
        self.held: list[str] = []  # seen, not yet released

    def push(self, text: str) -> str:
        out: list[str] = []
        if not text:
            return ""
        if not self.pattern and max(self.runs) + len(text) < REPEATS - 1:
            self._take_short_of_a_loop(text, out)  # the common case: no run can reach REPEATS copies in `text`
        else:
            for char in text:
                self._take(char, out)
        return "".join(out)

    def _take_short_of_a_loop(self, text: str, out: list[str]) -> None:
        """`_take` of each character of `text`, at once: only periods whose run reaches the last character can be
        non-zero afterwards, and those are found by searching for that character."""
        window = "".join(self.recent) + text
        n, length, seen = len(window), len(text), len(self.recent)
        runs = [0] * MAX_PATTERN
        last, lowest = window[-1], max(0, n - 1 - MAX_PATTERN)
        j = window.rfind(last, lowest, n - 1)
        while j >= 0:
            size = n - 1 - j
            if seen >= size and window[n - length:] == window[n - length - size:n - size]:
                runs[size - 1] = self.runs[size - 1] + length  # the whole of `text` continues the run
            else:
                count = 1
                while count < length and n - 1 - count - size >= 0 and \
                        window[n - 1 - count] == window[n - 1 - count - size]:
                    count += 1
                runs[size - 1] = count
            j = window.rfind(last, lowest, j)
        self.runs = runs
        self.recent = list(window[-MAX_PATTERN:])
        self.held.extend(text)
        releasable = len(self.held) - max(runs)
        if releasable > 0:
            out.extend(self.held[:releasable])
            del self.held[:releasable]

    def finish(self) -> str:
        """The rest, once no more text will come: a run that never reached REPEATS copies is kept whole, and so is
        the unfinished copy after a cut one."""
        rest = "".join(self.held + self.partial)
        self._restart()
        self.pattern, self.partial = "", []
        return rest

    def _take(self, char: str, out: list[str]) -> None:
        if self.pattern:
            if char == self.pattern[len(self.partial)]:
                self.partial.append(char)
                if len(self.partial) == len(self.pattern):
                    self.partial.clear()  # one more whole copy: dropped
                return
            rest, self.pattern, self.partial = [*self.partial, char], "", []
            for again in rest:
                self._take(again, out)
            return
        # reversed(recent) is the character 1, 2, ... places back; sizes longer than what was seen have no run
        runs = [run + 1 if before == char else 0 for run, before in zip(self.runs, reversed(self.recent))]
        self.runs = runs + [0] * (MAX_PATTERN - len(runs))
        self.recent = [*self.recent[1 - MAX_PATTERN:], char]
        self.held.append(char)
        longest = max(self.runs)
        if longest >= REPEATS - 1:  # the fewest a run can have at REPEATS copies (of one character)
            for size, copies in enumerate(self.runs, start=1):
                if copies == (REPEATS - 1) * size:  # REPEATS copies in a row: keep the first, drop the rest
                    out.extend(self.held[:len(self.held) - copies])
                    self.pattern = "".join(self.recent[-size:])  # the run is whole copies: the last is the first
                    self._restart()
                    return
        releasable = len(self.held) - longest
        if releasable > 0:
            out.extend(self.held[:releasable])
            del self.held[:releasable]
