"""l2_session.tools"""
