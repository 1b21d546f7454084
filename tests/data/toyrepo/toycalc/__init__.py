"""A tiny package with tests, for the forager's tests."""


def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value


def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)


def running_max(values):
    best = None
    out = []
    for value in values:
        if best is None or value > best:
            best = value
        out.append(best)
    return out


def words(text):
    return [word.lower() for word in text.split() if word]


def unused(x):
    return x * 2
