"""covidct.segment"""
