"""l2_session.transports"""
