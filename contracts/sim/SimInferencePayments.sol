// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title SimInferencePayments
/// @notice Users pay inference nodes per unit of usage; the payment is forwarded to
///         the node at once. The simulator's stand-in for the network's settlement
///         of user payments (NodeRegistry settles the nodes' side).
contract SimInferencePayments {
    uint256 public immutable pricePerUnit;
    uint256 public totalUnits;
    uint256 public totalPaid;

    event InferencePaid(address indexed user, address indexed node, uint64 units, uint256 amount);

    error ZeroAmount();
    error WrongPayment(uint256 sent, uint256 expected);
    error TransferFailed(address to, uint256 amount);

    constructor(uint256 pricePerUnit_) {
        pricePerUnit = pricePerUnit_;
    }

    /// @notice Pay `node` for `units` of inference; `msg.value` must be units * price.
    function pay(address node, uint64 units) external payable {
        if (units == 0) revert ZeroAmount();
        uint256 expected = uint256(units) * pricePerUnit;
        if (msg.value != expected) revert WrongPayment(msg.value, expected);
        totalUnits += units;
        totalPaid += msg.value;
        emit InferencePaid(msg.sender, node, units, msg.value);
        (bool ok,) = node.call{value: msg.value}("");
        if (!ok) revert TransferFailed(node, msg.value);
    }
}
