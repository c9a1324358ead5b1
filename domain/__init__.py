"""l2_session.domain"""
