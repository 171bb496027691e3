// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title SimToken
/// @notice Minimal ERC-20 for Vigil's traffic simulator: the owner mints, and any
///         address can `claim` a fixed airdrop once (what sybil farms go after).
/// @dev Simulation only; no permit, no hooks.
contract SimToken {
    string public name;
    string public symbol;
    uint8 public constant decimals = 18;
    uint256 public totalSupply;
    uint256 public immutable claimAmount;
    address public immutable owner;

    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    mapping(address => bool) public claimed;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Claimed(address indexed account, uint256 amount);

    error NotOwner();
    error AlreadyClaimed(address account);
    error InsufficientBalance(uint256 balance, uint256 needed);
    error InsufficientAllowance(uint256 allowance, uint256 needed);

    constructor(string memory name_, string memory symbol_, uint256 claimAmount_) {
        name = name_;
        symbol = symbol_;
        claimAmount = claimAmount_;
        owner = msg.sender;
    }

    function mint(address to, uint256 amount) external {
        if (msg.sender != owner) revert NotOwner();
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    /// @notice One airdrop of `claimAmount` per address.
    function claim() external {
        if (claimed[msg.sender]) revert AlreadyClaimed(msg.sender);
        claimed[msg.sender] = true;
        totalSupply += claimAmount;
        balanceOf[msg.sender] += claimAmount;
        emit Transfer(address(0), msg.sender, claimAmount);
        emit Claimed(msg.sender, claimAmount);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert InsufficientAllowance(allowed, value);
            allowance[from][msg.sender] = allowed - value;
        }
        _move(from, to, value);
        return true;
    }

    function _move(address from, address to, uint256 value) private {
        uint256 bal = balanceOf[from];
        if (bal < value) revert InsufficientBalance(bal, value);
        unchecked {
            balanceOf[from] = bal - value;
        }
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
