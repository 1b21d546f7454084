# The neural debugger's walkthrough program (README): a helper call, a loop, a branch; four calls to trace.


def square(v):
    return v * v


def f(x):
    y = square(x)
    total = 0
    while x > 0:
        total += x
        x -= 1
    if total > 5:
        return total
    return y - total


f(1)
f(2)
f(3)
f(4)
