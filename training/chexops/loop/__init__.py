"""The closed loop: clinic traffic with simulated clinicians, the business report of two versions, the feedback
experiment. May import serving, feedback, evaluation, train and everything below them.
"""
