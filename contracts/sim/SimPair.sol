// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface ISimERC20 {
    function transferFrom(address from, address to, uint256 value) external returns (bool);
    function transfer(address to, uint256 value) external returns (bool);
}

/// @title SimPair
/// @notice A small constant-product AMM (x * y = k, 0.3% fee) for the traffic
///         simulator: victims swap here, sandwich and arbitrage bots trade around them.
/// @dev Simulation only: liquidity is added by the owner and never withdrawn.
contract SimPair {
    address public immutable token0;
    address public immutable token1;
    address public immutable owner;
    uint256 public reserve0;
    uint256 public reserve1;

    /// @notice `sender` swapped `amountIn` of token0 (zeroForOne) or token1 for `amountOut`.
    event Swap(address indexed sender, address indexed to, bool zeroForOne, uint256 amountIn, uint256 amountOut);
    event Sync(uint256 reserve0, uint256 reserve1);

    error NotOwner();
    error ZeroAmount();
    error Slippage(uint256 amountOut, uint256 minOut);

    constructor(address token0_, address token1_) {
        token0 = token0_;
        token1 = token1_;
        owner = msg.sender;
    }

    function addLiquidity(uint256 amount0, uint256 amount1) external {
        if (msg.sender != owner) revert NotOwner();
        ISimERC20(token0).transferFrom(msg.sender, address(this), amount0);
        ISimERC20(token1).transferFrom(msg.sender, address(this), amount1);
        reserve0 += amount0;
        reserve1 += amount1;
        emit Sync(reserve0, reserve1);
    }

    /// @notice Output for `amountIn` given the reserves (0.3% fee), as Uniswap v2.
    function getAmountOut(uint256 amountIn, uint256 reserveIn, uint256 reserveOut) public pure returns (uint256) {
        uint256 inWithFee = amountIn * 997;
        return (inWithFee * reserveOut) / (reserveIn * 1000 + inWithFee);
    }

    /// @notice Swap exactly `amountIn` in for at least `minOut` out, paid to `to`.
    function swapExactIn(bool zeroForOne, uint256 amountIn, uint256 minOut, address to)
        external
        returns (uint256 amountOut)
    {
        if (amountIn == 0) revert ZeroAmount();
        (address tIn, address tOut, uint256 rIn, uint256 rOut) =
            zeroForOne ? (token0, token1, reserve0, reserve1) : (token1, token0, reserve1, reserve0);
        amountOut = getAmountOut(amountIn, rIn, rOut);
        if (amountOut < minOut || amountOut == 0) revert Slippage(amountOut, minOut);
        ISimERC20(tIn).transferFrom(msg.sender, address(this), amountIn);
        ISimERC20(tOut).transfer(to, amountOut);
        if (zeroForOne) {
            reserve0 = rIn + amountIn;
            reserve1 = rOut - amountOut;
        } else {
            reserve1 = rIn + amountIn;
            reserve0 = rOut - amountOut;
        }
        emit Swap(msg.sender, to, zeroForOne, amountIn, amountOut);
        emit Sync(reserve0, reserve1);
    }
}
