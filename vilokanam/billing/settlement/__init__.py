"""Settlement of watched ticks (local ledger or a Substrate chain) and the chain deposit watcher.

Import the pieces from their modules (``settler.Settler``, ``watcher.DepositWatcher``): the chain
client needs substrate-interface, which only the substrate backend loads.
"""
