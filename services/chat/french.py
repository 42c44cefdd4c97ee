"""Numbers and sizes written the French way, in error messages and in the notes the model reads."""


def thousands(number: int) -> str:
    return f"{number:,}".replace(",", " ")


def human_size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f}".rstrip("0").rstrip(".") + " Mo"
    return f"{size / 1024:.1f}".rstrip("0").rstrip(".") + " Kio"
