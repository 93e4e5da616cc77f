def main() -> None:
    raise SystemExit("qasr: not built yet")
