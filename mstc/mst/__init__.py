"""The MST planner: Hamming distances between binary filters and spanning forests over channels."""

from mstc.mst.hamming import hamming_matrix
from mstc.mst.plan import Plan, edge_costs, forest_order, plan, plan_from_costs

__all__ = ["Plan", "edge_costs", "forest_order", "hamming_matrix", "plan", "plan_from_costs"]
