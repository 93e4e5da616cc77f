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
        # runs[s]: how many of the latest characters equal the character s places before them; those are the second
        # and later copies of a pattern of s characters, which a longer run would drop
        self.runs = [0] * (MAX_PATTERN + 1)
        self.held: list[str] = []  # seen, not yet released

    def push(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            self._take(char, out)
        return "".join(out)

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
        for size in range(1, MAX_PATTERN + 1):
            self.runs[size] = self.runs[size] + 1 if len(self.recent) >= size and self.recent[-size] == char else 0
        self.recent = [*self.recent[1 - MAX_PATTERN:], char]
        self.held.append(char)
        for size in range(1, MAX_PATTERN + 1):
            copies = self.runs[size]
            if copies == (REPEATS - 1) * size:  # REPEATS copies in a row: keep the first, drop the rest
                out.extend(self.held[:len(self.held) - copies])
                self.pattern = "".join(self.recent[-size:])  # the run is whole copies: the last is the first
                self._restart()
                return
        releasable = len(self.held) - max(self.runs)
        if releasable > 0:
            out.extend(self.held[:releasable])
            del self.held[:releasable]
