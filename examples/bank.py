"""A small program to trace: run `opencwm trace run examples/bank.py`."""


class Account:
    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance

    def apply(self, amount):
        if self.balance + amount < 0:
            raise ValueError(f"insufficient funds for {amount}")
        self.balance += amount
        return self.balance


def settle(account, amounts):
    rejected = []
    for amount in amounts:
        try:
            account.apply(amount)
        except ValueError:
            rejected.append(amount)
    return account.balance, rejected


def main(start, amounts):
    account = Account("ada", start)
    balance, rejected = settle(account, amounts)
    return {"balance": balance, "rejected": rejected}


main(100, [25, -150, -60, 10])
main(0, [-1, 5])
