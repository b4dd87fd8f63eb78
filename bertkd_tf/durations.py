"""Durations as progress lines print them."""


def format_duration(seconds):
    """`h:mm:ss`, or `m:ss` under an hour, of a number of seconds (rounded;
    negative counts as 0).

    Example:
    >>> format_duration(3725.4), format_duration(75)
    ('1:02:05', '1:15')
    """
    seconds = int(round(max(float(seconds), 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"
