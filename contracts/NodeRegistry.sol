// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title NodeRegistry
/// @notice On-chain registry of a decentralized AI inference network: node stake,
///         usage settlement, graded throttling and slashing with a governance
///         challenge period. Vigil (the off-chain security monitor) holds the
///         MONITOR role; protocol governance holds the GOVERNANCE role.
/// @dev Self-contained on purpose (no imports). Conventions:
///      - A node identity is an address; one operator may own several nodes.
///      - Every monitor action carries an `evidenceHash` that can be consumed once
///        across all actions (`evidenceUsed`), so a monitor that crashes and replays
///        its action log cannot act twice on the same evidence.
///      - A throttle is in force while `block.number <= untilBlock`.
///      - A slash proposed in block P with challenge period N can be vetoed in blocks
///        P..P+N and executed from block P+N+1 on.
///      - Stake never leaves the contract while a slash against the node is pending;
///        slashed stake stays in the contract, accounted in `slashedBalance`, until
///        governance sweeps it to a treasury.
contract NodeRegistry {
    // ---------------------------------------------------------------- roles

    /// @notice Role of the deployer: grants and revokes the other roles.
    bytes32 public constant ADMIN_ROLE = keccak256("ADMIN_ROLE");
    /// @notice Role of the security monitor: throttles accounts and proposes slashes.
    bytes32 public constant MONITOR_ROLE = keccak256("MONITOR_ROLE");
    /// @notice Role of protocol governance: vetoes or executes slashes, pardons.
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");

    /// @notice Longest accepted node URL, in bytes.
    uint256 public constant MAX_URL_LENGTH = 512;

    // ---------------------------------------------------------------- types

    /// @notice Lifecycle of a slash proposal.
    enum ProposalState {
        None,
        Pending,
        Vetoed,
        Executed
    }

    /// @dev Storage record of one node.
    struct Node {
        address operator;
        bool active;
        uint64 registeredBlock;
        uint64 exitBlock;
        uint64 lastPeriod;
        uint256 stake;
        uint256 pendingSlash;
        uint256 totalUnits;
        uint256 totalSlashed;
        bytes32 lastCommitment;
        string url;
    }

    /// @dev Storage record of one throttle.
    struct Throttle {
        uint8 level;
        uint64 untilBlock;
    }

    /// @dev Storage record of one slash proposal.
    struct SlashProposal {
        address node;
        address proposer;
        uint64 proposedBlock;
        uint64 challengeEndBlock;
        ProposalState state;
        uint256 amount;
        bytes32 evidenceHash;
    }

    // ---------------------------------------------------------------- errors

    /// @notice `caller` lacks `role`.
    error Unauthorized(bytes32 role, address caller);
    /// @notice `caller` is not the operator of `node`.
    error NotOperator(address node, address caller);
    /// @notice Only MONITOR_ROLE and GOVERNANCE_ROLE can be granted or revoked.
    error InvalidRole(bytes32 role);
    /// @notice A zero address was given where an account is required.
    error ZeroAddress();
    /// @notice A zero amount was given where a positive one is required.
    error ZeroAmount();
    /// @notice The zero hash is not valid evidence.
    error ZeroEvidence();
    /// @notice The URL is empty or longer than MAX_URL_LENGTH.
    error InvalidUrl(uint256 length);
    /// @notice `node` already has a registration (identities are never reused).
    error NodeAlreadyRegistered(address node);
    /// @notice `node` was never registered.
    error NodeNotRegistered(address node);
    /// @notice `node` has deregistered.
    error NodeInactive(address node);
    /// @notice `node` is still registered and active.
    error NodeStillActive(address node);
    /// @notice The stake sent is below `minStake`.
    error InsufficientStake(uint256 provided, uint256 required);
    /// @notice `evidenceHash` was already consumed by an earlier action.
    error EvidenceAlreadyUsed(bytes32 evidenceHash);
    /// @notice Throttle level must be positive and `untilBlock` in the future.
    error InvalidThrottle(uint8 level, uint64 untilBlock);
    /// @notice `account` has no throttle in force.
    error NotThrottled(address account);
    /// @notice Slash `amount` exceeds the node's stake not already under a pending slash.
    error SlashExceedsStake(uint256 amount, uint256 available);
    /// @notice No proposal has id `id`.
    error UnknownProposal(uint256 id);
    /// @notice Proposal `id` is in `state`, not Pending.
    error ProposalNotPending(uint256 id, ProposalState state);
    /// @notice Proposal `id` can still be vetoed until `challengeEndBlock`.
    error ChallengePeriodActive(uint256 id, uint64 challengeEndBlock);
    /// @notice The veto window of proposal `id` closed at `challengeEndBlock`.
    error ChallengePeriodOver(uint256 id, uint64 challengeEndBlock);
    /// @notice The challenge period must be at least one block.
    error InvalidChallengePeriod();
    /// @notice Stake of `node` can only be withdrawn from block `withdrawableBlock` on.
    error StillUnbonding(address node, uint64 withdrawableBlock);
    /// @notice Slashes against `node` are still pending.
    error SlashPending(address node, uint256 pendingAmount);
    /// @notice Fewer slashed funds are held than requested.
    error InsufficientSlashedBalance(uint256 requested, uint256 available);
    /// @notice An ether transfer failed.
    error TransferFailed(address to, uint256 amount);
    /// @notice A guarded function was re-entered.
    error Reentrancy();

    // ---------------------------------------------------------------- events

    /// @notice `account` was granted `role` by `sender`.
    event RoleGranted(bytes32 indexed role, address indexed account, address indexed sender);
    /// @notice `account` lost `role`, revoked by `sender`.
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed sender);
    /// @notice The admin changed.
    event AdminTransferred(address indexed previousAdmin, address indexed newAdmin);
    /// @notice A node was registered with its initial stake.
    event NodeRegistered(address indexed node, address indexed operator, uint256 stake, string url);
    /// @notice A node's URL changed.
    event NodeUrlUpdated(address indexed node, string url);
    /// @notice Stake was added to a node.
    event StakeAdded(address indexed node, address indexed operator, uint256 amount, uint256 newStake);
    /// @notice A node left the network; its stake unbonds for one challenge period and
    ///         can be withdrawn from block `withdrawableBlock` on.
    event NodeDeregistered(address indexed node, address indexed operator, uint64 withdrawableBlock);
    /// @notice A deregistered node's remaining stake was returned to its operator.
    event StakeWithdrawn(address indexed node, address indexed operator, uint256 amount);
    /// @notice A node's operator settled `units` of usage for `period`.
    event UsageSettled(
        address indexed node, address indexed operator, uint64 indexed period, uint64 units, bytes32 commitment
    );
    /// @notice The monitor throttled `account` to `level` until `untilBlock` (inclusive).
    event Throttled(address indexed account, uint8 level, uint64 untilBlock, bytes32 indexed evidenceHash);
    /// @notice The monitor lifted `account`'s throttle (de-escalation).
    event Unthrottled(address indexed account, bytes32 indexed evidenceHash, address indexed monitor);
    /// @notice Governance lifted `account`'s throttle.
    event Pardoned(address indexed account, address indexed governance, uint8 previousLevel);
    /// @notice The monitor proposed slashing `amount` of `node`'s stake.
    event SlashProposed(
        uint256 indexed id, address indexed node, uint256 amount, bytes32 indexed evidenceHash, uint64 challengeEndBlock
    );
    /// @notice Governance vetoed slash proposal `id`.
    event SlashVetoed(uint256 indexed id, address indexed node, address indexed governance);
    /// @notice Slash proposal `id` was executed: `amount` moved from stake to slashedBalance.
    event SlashExecuted(uint256 indexed id, address indexed node, uint256 amount, uint256 remainingStake);
    /// @notice Governance moved slashed funds to `to`.
    event SlashedFundsSwept(address indexed to, uint256 amount, address indexed governance);

    // ---------------------------------------------------------------- state

    /// @notice Current admin (initially the deployer).
    address public admin;
    /// @notice Blocks during which governance may veto a slash proposal; also the
    ///         unbonding period after deregistration.
    uint64 public immutable challengePeriodBlocks;
    /// @notice Smallest stake accepted at registration, in wei.
    uint256 public immutable minStake;

    /// @notice Sum of all settled usage units.
    uint256 public totalUnitsSettled;
    /// @notice Number of settlements across all nodes.
    uint256 public settlementCount;
    /// @notice Stake of all nodes held by the contract (excluding slashed funds).
    uint256 public totalStaked;
    /// @notice Slashed funds held by the contract and not yet swept.
    uint256 public slashedBalance;
    /// @notice Slashed funds ever (swept or not).
    uint256 public totalSlashed;

    mapping(bytes32 => mapping(address => bool)) private _roles;
    mapping(address => Node) private _nodes;
    mapping(address => address[]) private _operatorNodes;
    address[] private _nodeList;
    mapping(address => Throttle) private _throttles;
    mapping(bytes32 => bool) private _evidenceUsed;
    SlashProposal[] private _proposals;
    uint256 private _lock = 1;

    // ---------------------------------------------------------------- modifiers

    modifier onlyAdmin() {
        if (msg.sender != admin) revert Unauthorized(ADMIN_ROLE, msg.sender);
        _;
    }

    modifier onlyRole(bytes32 role) {
        if (!_roles[role][msg.sender]) revert Unauthorized(role, msg.sender);
        _;
    }

    modifier onlyOperator(address node) {
        address op = _nodes[node].operator;
        if (op == address(0)) revert NodeNotRegistered(node);
        if (op != msg.sender) revert NotOperator(node, msg.sender);
        _;
    }

    modifier nonReentrant() {
        if (_lock != 1) revert Reentrancy();
        _lock = 2;
        _;
        _lock = 1;
    }

    /// @param monitor First holder of MONITOR_ROLE (zero address: none yet).
    /// @param governance First holder of GOVERNANCE_ROLE (zero address: none yet).
    /// @param challengePeriodBlocks_ Veto window of slash proposals, in blocks (>= 1).
    /// @param minStake_ Smallest registration stake, in wei.
    constructor(address monitor, address governance, uint64 challengePeriodBlocks_, uint256 minStake_) {
        if (challengePeriodBlocks_ == 0) revert InvalidChallengePeriod();
        admin = msg.sender;
        challengePeriodBlocks = challengePeriodBlocks_;
        minStake = minStake_;
        emit AdminTransferred(address(0), msg.sender);
        if (monitor != address(0)) _grant(MONITOR_ROLE, monitor);
        if (governance != address(0)) _grant(GOVERNANCE_ROLE, governance);
    }

    // ---------------------------------------------------------------- role admin

    /// @notice Grant MONITOR_ROLE or GOVERNANCE_ROLE to `account`. Admin only.
    function grantRole(bytes32 role, address account) external onlyAdmin {
        _checkRole(role);
        if (account == address(0)) revert ZeroAddress();
        _grant(role, account);
    }

    /// @notice Revoke MONITOR_ROLE or GOVERNANCE_ROLE from `account`. Admin only.
    function revokeRole(bytes32 role, address account) external onlyAdmin {
        _checkRole(role);
        if (_roles[role][account]) {
            _roles[role][account] = false;
            emit RoleRevoked(role, account, msg.sender);
        }
    }

    /// @notice Hand the admin role to `newAdmin`. Admin only.
    function transferAdmin(address newAdmin) external onlyAdmin {
        if (newAdmin == address(0)) revert ZeroAddress();
        emit AdminTransferred(admin, newAdmin);
        admin = newAdmin;
    }

    /// @notice Whether `account` holds `role` (ADMIN_ROLE: whether it is the admin).
    function hasRole(bytes32 role, address account) external view returns (bool) {
        if (role == ADMIN_ROLE) return account == admin;
        return _roles[role][account];
    }

    // ---------------------------------------------------------------- nodes

    /// @notice Register `node`, operated by the caller, staking `msg.value` (>= minStake).
    /// @param node The node's identity (the address it signs telemetry and settlements with).
    /// @param url The node's public inference endpoint.
    function registerNode(address node, string calldata url) external payable {
        if (node == address(0)) revert ZeroAddress();
        if (_nodes[node].operator != address(0)) revert NodeAlreadyRegistered(node);
        if (msg.value < minStake) revert InsufficientStake(msg.value, minStake);
        _checkUrl(url);
        Node storage n = _nodes[node];
        n.operator = msg.sender;
        n.active = true;
        n.registeredBlock = uint64(block.number);
        n.stake = msg.value;
        n.url = url;
        totalStaked += msg.value;
        _operatorNodes[msg.sender].push(node);
        _nodeList.push(node);
        emit NodeRegistered(node, msg.sender, msg.value, url);
    }

    /// @notice Add `msg.value` to the stake of `node`. Its operator only, while active.
    function addStake(address node) external payable onlyOperator(node) {
        if (msg.value == 0) revert ZeroAmount();
        Node storage n = _nodes[node];
        if (!n.active) revert NodeInactive(node);
        n.stake += msg.value;
        totalStaked += msg.value;
        emit StakeAdded(node, msg.sender, msg.value, n.stake);
    }

    /// @notice Change the URL of `node`. Its operator only.
    function updateUrl(address node, string calldata url) external onlyOperator(node) {
        _checkUrl(url);
        _nodes[node].url = url;
        emit NodeUrlUpdated(node, url);
    }

    /// @notice Take `node` out of service; its stake unbonds for `challengePeriodBlocks`.
    function deregisterNode(address node) external onlyOperator(node) {
        Node storage n = _nodes[node];
        if (!n.active) revert NodeInactive(node);
        n.active = false;
        n.exitBlock = uint64(block.number);
        emit NodeDeregistered(node, msg.sender, n.exitBlock + challengePeriodBlocks);
    }

    /// @notice Return the remaining stake of a deregistered `node` to its operator once
    ///         unbonding is over and no slash against it is pending.
    function withdrawStake(address node) external onlyOperator(node) nonReentrant {
        Node storage n = _nodes[node];
        if (n.active) revert NodeStillActive(node);
        uint64 withdrawable = n.exitBlock + challengePeriodBlocks;
        if (block.number < withdrawable) revert StillUnbonding(node, withdrawable);
        if (n.pendingSlash != 0) revert SlashPending(node, n.pendingSlash);
        uint256 amount = n.stake;
        if (amount == 0) revert ZeroAmount();
        n.stake = 0;
        totalStaked -= amount;
        emit StakeWithdrawn(node, msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @notice Registration record of `node` (operator is zero when unregistered).
    function nodeInfo(address node)
        external
        view
        returns (address operator, uint256 stake, string memory url, uint64 registeredBlock, bool active)
    {
        Node storage n = _nodes[node];
        return (n.operator, n.stake, n.url, n.registeredBlock, n.active);
    }

    /// @notice Settlement and slashing totals of `node`.
    /// @return lastPeriod Id of the latest settled period (0: none yet).
    /// @return totalUnits Sum of the node's settled units.
    /// @return lastCommitment Commitment of the latest settled period.
    /// @return pendingSlash Stake under pending slash proposals.
    /// @return slashed Stake slashed from this node so far.
    function nodeAccounting(address node)
        external
        view
        returns (uint64 lastPeriod, uint256 totalUnits, bytes32 lastCommitment, uint256 pendingSlash, uint256 slashed)
    {
        Node storage n = _nodes[node];
        return (n.lastPeriod, n.totalUnits, n.lastCommitment, n.pendingSlash, n.totalSlashed);
    }

    /// @notice Nodes ever registered by `operator`.
    function nodesOf(address operator) external view returns (address[] memory) {
        return _operatorNodes[operator];
    }

    /// @notice Number of nodes ever registered.
    function nodeCount() external view returns (uint256) {
        return _nodeList.length;
    }

    /// @notice The `index`-th registered node (registration order).
    function nodeAt(uint256 index) external view returns (address) {
        return _nodeList[index];
    }

    // ---------------------------------------------------------------- usage

    /// @notice Settle `units` of served usage for the next period of `node`. Its operator only.
    /// @param commitment Hash committing to the period's usage records (checked off-chain).
    /// @return period The id of the settled period (1, 2, 3, ... per node).
    function settleUsage(address node, uint64 units, bytes32 commitment)
        external
        onlyOperator(node)
        returns (uint64 period)
    {
        Node storage n = _nodes[node];
        if (!n.active) revert NodeInactive(node);
        if (units == 0) revert ZeroAmount();
        period = n.lastPeriod + 1;
        n.lastPeriod = period;
        n.totalUnits += units;
        n.lastCommitment = commitment;
        totalUnitsSettled += units;
        settlementCount += 1;
        emit UsageSettled(node, msg.sender, period, units, commitment);
    }

    // ---------------------------------------------------------------- throttling

    /// @notice Throttle `account` (a user, a bot or a node) to `level` through `untilBlock`.
    ///         Replaces any throttle in force. Monitor only; consumes `evidenceHash`.
    function throttle(address account, uint8 level, uint64 untilBlock, bytes32 evidenceHash)
        external
        onlyRole(MONITOR_ROLE)
    {
        if (account == address(0)) revert ZeroAddress();
        if (level == 0 || untilBlock <= block.number) revert InvalidThrottle(level, untilBlock);
        _useEvidence(evidenceHash);
        _throttles[account] = Throttle(level, untilBlock);
        emit Throttled(account, level, untilBlock, evidenceHash);
    }

    /// @notice Lift `account`'s throttle (de-escalation). Monitor only; consumes `evidenceHash`.
    function unthrottle(address account, bytes32 evidenceHash) external onlyRole(MONITOR_ROLE) {
        if (!_throttled(account)) revert NotThrottled(account);
        _useEvidence(evidenceHash);
        delete _throttles[account];
        emit Unthrottled(account, evidenceHash, msg.sender);
    }

    /// @notice Lift `account`'s throttle. Governance only.
    function pardon(address account) external onlyRole(GOVERNANCE_ROLE) {
        if (!_throttled(account)) revert NotThrottled(account);
        uint8 previous = _throttles[account].level;
        delete _throttles[account];
        emit Pardoned(account, msg.sender, previous);
    }

    /// @notice Throttle in force on `account`; (0, 0) when none or expired.
    function throttleOf(address account) external view returns (uint8 level, uint64 untilBlock) {
        if (!_throttled(account)) return (0, 0);
        Throttle storage t = _throttles[account];
        return (t.level, t.untilBlock);
    }

    /// @notice Whether `evidenceHash` was consumed by a throttle, unthrottle or slash proposal.
    function evidenceUsed(bytes32 evidenceHash) external view returns (bool) {
        return _evidenceUsed[evidenceHash];
    }

    // ---------------------------------------------------------------- slashing

    /// @notice Propose slashing `amount` of `node`'s stake. Monitor only; consumes `evidenceHash`.
    /// @return id The proposal id (0, 1, 2, ...).
    function proposeSlash(address node, uint256 amount, bytes32 evidenceHash)
        external
        onlyRole(MONITOR_ROLE)
        returns (uint256 id)
    {
        Node storage n = _nodes[node];
        if (n.operator == address(0)) revert NodeNotRegistered(node);
        if (amount == 0) revert ZeroAmount();
        uint256 available = n.stake - n.pendingSlash;
        if (amount > available) revert SlashExceedsStake(amount, available);
        _useEvidence(evidenceHash);
        n.pendingSlash += amount;
        uint64 end = uint64(block.number) + challengePeriodBlocks;
        id = _proposals.length;
        _proposals.push(
            SlashProposal({
                node: node,
                proposer: msg.sender,
                proposedBlock: uint64(block.number),
                challengeEndBlock: end,
                state: ProposalState.Pending,
                amount: amount,
                evidenceHash: evidenceHash
            })
        );
        emit SlashProposed(id, node, amount, evidenceHash, end);
    }

    /// @notice Veto pending proposal `id` during its challenge period. Governance only.
    function veto(uint256 id) external onlyRole(GOVERNANCE_ROLE) {
        SlashProposal storage p = _pending(id);
        if (block.number > p.challengeEndBlock) revert ChallengePeriodOver(id, p.challengeEndBlock);
        p.state = ProposalState.Vetoed;
        _nodes[p.node].pendingSlash -= p.amount;
        emit SlashVetoed(id, p.node, msg.sender);
    }

    /// @notice Execute pending proposal `id` after its challenge period. Governance only.
    function executeSlash(uint256 id) external onlyRole(GOVERNANCE_ROLE) {
        SlashProposal storage p = _pending(id);
        if (block.number <= p.challengeEndBlock) revert ChallengePeriodActive(id, p.challengeEndBlock);
        p.state = ProposalState.Executed;
        Node storage n = _nodes[p.node];
        uint256 amount = p.amount;
        // pendingSlash <= stake always holds: stake only shrinks by slashes or by a
        // withdrawal, and withdrawals are refused while a slash is pending.
        n.pendingSlash -= amount;
        n.stake -= amount;
        n.totalSlashed += amount;
        totalStaked -= amount;
        slashedBalance += amount;
        totalSlashed += amount;
        emit SlashExecuted(id, p.node, amount, n.stake);
    }

    /// @notice Move `amount` of slashed funds to `to` (a treasury). Governance only.
    function sweepSlashed(address payable to, uint256 amount) external onlyRole(GOVERNANCE_ROLE) nonReentrant {
        if (to == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (amount > slashedBalance) revert InsufficientSlashedBalance(amount, slashedBalance);
        slashedBalance -= amount;
        emit SlashedFundsSwept(to, amount, msg.sender);
        _send(to, amount);
    }

    /// @notice Number of slash proposals ever made.
    function proposalCount() external view returns (uint256) {
        return _proposals.length;
    }

    /// @notice Slash proposal `id`.
    function getProposal(uint256 id)
        external
        view
        returns (
            address node,
            uint256 amount,
            bytes32 evidenceHash,
            address proposer,
            uint64 proposedBlock,
            uint64 challengeEndBlock,
            ProposalState state
        )
    {
        if (id >= _proposals.length) revert UnknownProposal(id);
        SlashProposal storage p = _proposals[id];
        return (p.node, p.amount, p.evidenceHash, p.proposer, p.proposedBlock, p.challengeEndBlock, p.state);
    }

    // ---------------------------------------------------------------- internals

    function _grant(bytes32 role, address account) private {
        if (!_roles[role][account]) {
            _roles[role][account] = true;
            emit RoleGranted(role, account, msg.sender);
        }
    }

    function _checkRole(bytes32 role) private pure {
        if (role != MONITOR_ROLE && role != GOVERNANCE_ROLE) revert InvalidRole(role);
    }

    function _checkUrl(string calldata url) private pure {
        uint256 len = bytes(url).length;
        if (len == 0 || len > MAX_URL_LENGTH) revert InvalidUrl(len);
    }

    function _useEvidence(bytes32 evidenceHash) private {
        if (evidenceHash == bytes32(0)) revert ZeroEvidence();
        if (_evidenceUsed[evidenceHash]) revert EvidenceAlreadyUsed(evidenceHash);
        _evidenceUsed[evidenceHash] = true;
    }

    function _throttled(address account) private view returns (bool) {
        Throttle storage t = _throttles[account];
        return t.level != 0 && block.number <= t.untilBlock;
    }

    function _pending(uint256 id) private view returns (SlashProposal storage p) {
        if (id >= _proposals.length) revert UnknownProposal(id);
        p = _proposals[id];
        if (p.state != ProposalState.Pending) revert ProposalNotPending(id, p.state);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
