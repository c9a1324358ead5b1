"""l2_session.projections"""
