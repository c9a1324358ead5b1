"""l2_session.infrastructure"""
